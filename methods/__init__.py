"""Compression methods. Every module here registers itself with ``@register_method``;
adding a method means adding one file."""
