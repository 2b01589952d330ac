"""The lr-tuning plan of a job list: which job picks the fine-tuning lr that the other seeds
(and epoch counts) of its setting reuse. The order of the list (``priority``) is
``bench.jobs.prioritize``'s."""
from __future__ import annotations

from dataclasses import replace

from bench.registry import tunes_lr


#: the seed whose validation split picks the fine-tuning lr (and optimizer) of every seed of a
#: setting. Fixed, not "the lowest seed of this run": a run of ``--set protocol.seeds=[1]`` adds
#: seed 1 with seed 0's pick, instead of quietly tuning on seed 1 under the key of a reusing job.
TUNE_SEED = 0


def picks_lr(job) -> bool:
    """Whether ``job``'s fine-tuning lr comes from ``lr_grid``: not a fit-only job (it never
    fine-tunes), not one of a method that takes no picked lr (dense, NN-BCD: ``tunes_lr``)."""
    return bool(job.lr_grid) and not job.fit_only and tunes_lr(job.method)


def tuning_job(job):
    """The job that picks ``job``'s lr: its setting on ``TUNE_SEED`` at the tuning epoch count
    (the suite's tune_epochs, when it has one). Built, so it is known even when that job is not
    in the run (``--set protocol.seeds=[1]``)."""
    finetune = {**job.finetune, "epochs": job.tune_epochs} if job.borrows_pick else job.finetune
    return replace(job, seed=TUNE_SEED, finetune=finetune)


def tuner_key(job) -> str:
    """Key of the job that picks ``job``'s lr (``tuning_job``)."""
    return tuning_job(job).key


def tuning_jobs(jobs) -> dict[str, str]:
    """Tune key -> key of the job that picks the lr for it (``tuner_key``), for every tune key
    of the jobs that pick their lr (``picks_lr``); that job may or may not be one of ``jobs``."""
    return {j.tune_key: tuner_key(j) for j in jobs if picks_lr(j)}


def tuner_keys(jobs) -> set[str]:
    """Keys of the jobs among ``jobs`` that pick their lr from ``lr_grid`` (``tuning_jobs``)."""
    keys = {j.key for j in jobs}
    return {k for k in tuning_jobs(jobs).values() if k in keys}


def pick_for(job, lr_picks: dict[str, list] | None):
    """The tuning seed's picks, best first, for a job that reuses them (``Job.reuses_pick``);
    None for every other job: the tuning job itself searches the grid even when an older record
    of it (``--rerun``, another baseline) left picks under its tune key."""
    return (lr_picks or {}).get(job.tune_key) if job.reuses_pick else None
