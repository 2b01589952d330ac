"""Cost model: how long a job will take on a device, from a calibration measured there.

Why: GPU windows are short (minutes), so a sweep must know before starting a job whether it
can finish (``--time-budget``), skip factorisations that would eat the window
(``factorize_time_cap_s``) and say up front what a suite costs (``--dry-run``).

This module is the cost model's public face: where calibrations live, the budget's clock and
the time budget itself (``Budget``); it re-exports the names of the modules that do the rest
(issue #22: one job each), so ``from bench.cost import ...`` is the one import callers need:

- ``bench.cost_calibration``: the calibration file (reading it, its power laws);
- ``bench.cost_job``: a job's shape (images per split, steps, frozen-prefix scope);
- ``bench.cost_model``: ``CostModel``, seconds per stage of a job and of a suite (the model
  and its approximations are described there);
- ``bench.cost_steps``: per-step methods' (ADTN) share of those seconds;
- ``bench.cost_records``: estimates beside what records measured, cached baselines.

It imports no torch (the dry run's planning imports it when it needs it).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from bench.cost_calibration import (DEFAULT_STEP_FLOOR_S, VERSION, CalibrationError, device_kind,  # noqa: F401
                                    fit_power_law, law, load_calibration)
from bench.cost_job import augments, cache_group, dataset_sizes, scoped, split_sizes, train_steps  # noqa: F401
from bench.cost_model import STAGES, CostModel  # noqa: F401
from bench.cost_records import baseline_cached, compare_records, record_stages  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_DIR = REPO / "results" / "calibration"
#: the budget's clock (seconds); a module attribute so a test can inject a deterministic one
CLOCK = time.time


def default_path(kind: str) -> Path:
    return CALIBRATION_DIR / f"{kind}.json"


class Budget:
    """``--time-budget``: admits a job only if the cost model says it finishes in the time
    left. Remaining time is measured on ``CLOCK`` from construction; a job whose dense
    baseline is neither cached nor trained yet in this run pays for it, and a scoped job whose
    group's frozen-prefix cache is not built yet in this run pays for that (once each).
    Picklable, so worker processes carry a copy (each tracks its own baselines and caches)."""

    def __init__(self, seconds: float, model: CostModel, jobs: list, baseline_root: Path | None = None):
        from bench.plan import tuner_keys

        self.seconds, self.model = float(seconds), model
        self.start = CLOCK()
        self.tuners = tuner_keys(jobs)
        self.baseline_root = Path(baseline_root) if baseline_root is not None else None
        self.paid: set[str] = set()
        self.caches: set[tuple] = set()

    def remaining(self) -> float:
        return self.seconds - (CLOCK() - self.start)

    def estimate(self, job, by_trial: bool = False) -> float:
        """Seconds ``job`` needs from its start; ``by_trial``: to the end of its first trial only
        when it searches its fine-tuning pick (see ``__call__``)."""
        bkey, ckey = job.baseline_key, cache_group(job)
        unpaid = bkey not in self.paid and not (self.baseline_root is not None
                                                and baseline_cached(self.baseline_root, job))
        tuning, cache = job.key in self.tuners, ckey is not None and ckey not in self.caches
        if by_trial and tuning and self.model.trials(job, True) > 1:
            return sum(self.model.stages(job, True, unpaid, cache, trials=1).values())
        return self.model.job_s(job, tuning, with_baseline=unpaid, with_cache=cache)

    def __call__(self, job, by_trial: bool = False) -> bool:
        """True: start ``job`` now (its baseline and cache are then paid for). ``by_trial``: the
        runner keeps each finished trial of a search (``bench.trial_journal``) and asks
        ``room_for_trial`` before the next one, so room for the first is enough: a search of
        hours (VGG-16 on a CPU) advances by trials to the end of a budget instead of waiting
        for a budget that holds all of it."""
        if self.estimate(job, by_trial) > self.remaining():
            return False
        self.paid.add(job.baseline_key)
        if cache_group(job) is not None:
            self.caches.add(cache_group(job))
        return True

    def room_for_trial(self, job) -> Callable[[], bool]:
        """Whether one more trial of ``job``'s search fits in the time left, asked before each."""
        per_trial = self.model.trial_s(job)
        return lambda: per_trial <= self.remaining()
