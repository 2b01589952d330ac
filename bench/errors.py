"""The one error type that means "the user's input is wrong".

The CLI prints the first line of an ``InputError`` and exits 2 before any job runs. Every
other exception that escapes is a bug in tnbench or in a plugin, shown with its traceback
(exit 1): a ``ValueError`` deep in ``prepare`` is not the user's fault and must not read as if
it were. Each module's own error (``SuiteError``, ``UsageError``, ...) subclasses it and keeps
its older base, so existing ``except ValueError`` handlers behave as before."""
from __future__ import annotations


class InputError(Exception):
    """A bad suite, command line, name, plugin or data file; the message says what is valid."""
