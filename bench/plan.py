"""The lr-tuning plan of a job list: which job picks the fine-tuning lr that the other seeds
(and epoch counts) of its setting reuse. The order of the list (``priority``) is
``bench.jobs.prioritize``'s."""
from __future__ import annotations


def tuning_jobs(jobs) -> dict[str, str]:
    """Tune key -> key of the job that picks the lr for it: of the jobs with an ``lr_grid``
    sharing a tune key (same config but the seed), the one of the lowest seed (and, with a
    suite's tune_epochs, the one at that epoch count)."""
    tuner: dict[str, str] = {}
    for j in sorted(jobs, key=lambda j: (j.borrows_pick, j.seed)):
        if j.lr_grid:
            tuner.setdefault(j.tune_key, j.key)
    return tuner


def tuner_keys(jobs) -> set[str]:
    """Keys of the jobs that pick their lr from ``lr_grid`` (``tuning_jobs``)."""
    return set(tuning_jobs(jobs).values())

