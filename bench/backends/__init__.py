"""Backends turn groups of jobs into a stream of records: ``local`` (this process, or one
worker process per device) and ``ray`` (one task per job on a cluster). Only the driver
(bench/runner.py) writes records; backends never touch the records file.

Besides records, a backend yields ``Marker``s: jobs it did not run, which the driver counts and
never records.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

#: a job another sweep holds (its claim is live)
CLAIMED = "claimed_elsewhere"
#: a job ``--time-budget`` did not start (estimated not to finish in the time left): the next
#: run does it
LEFT = "left_for_later"
#: a job that reuses the lr pick of its tuning seed (``bench.plan.TUNE_SEED``) while that pick is
#: not recorded yet (another sweep is making it, or that seed was not run): the next run does it
WAITING = "waiting_for_pick"
#: not an outcome yet: a job whose baseline another process is training, handed to that
#: process for now; the sweep takes it back once the baseline is trained, and counts it
#: ``CLAIMED`` if it never does (``bench.backends.local.HandedToTrainers``)
HANDED = "handed_to_trainer"


@dataclass(frozen=True)
class Marker:
    """A job a backend did not run, and why (``CLAIMED``, ``LEFT`` or ``WAITING``): counted, never
    recorded; ``HANDED``: not run yet, neither counted nor recorded."""

    key: str
    status: str


#: what a backend yields per job
Outcome = Union[dict, Marker]


def key_of(item: Outcome) -> str:
    """The job key of a record or a marker."""
    return item.key if isinstance(item, Marker) else item["key"]
