"""Backends turn groups of jobs into a stream of records: ``local`` (this process, or one
worker process per device) and ``ray`` (one task per job on a cluster). Only the driver
(bench/runner.py) writes records; backends never touch the records file."""
