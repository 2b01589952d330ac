"""Benchmarks: ``python -m bench.perf NAME`` runs ``bench/perf/NAME.py``'s ``main``."""
