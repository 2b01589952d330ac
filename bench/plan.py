"""Planning a job list: the suite's priority stages (what ``--time-budget`` spends its time on
first) and which job picks the fine-tuning lr that the other seeds of its setting reuse."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from bench.suite_schema import STAGES

if TYPE_CHECKING:
    from bench.jobs import Job
    from bench.spec import Suite


def prioritize(jobs: list[Job], suite: Suite) -> list[Job]:
    """Jobs in the suite's ``priority`` order (stable: the expansion order within a stage);
    unchanged without one. Stages not listed come after the listed ones. Within ``seeds``,
    seed by seed, each in the order of the other stages. Returns copies with ``Job.stage`` set."""
    prio = suite.priority
    first = min(suite.protocol.seeds)
    head = suite.headline_ratio

    def own_stage(j: Job) -> str:
        if j.reference:
            return "baselines"
        if head is not None and j.target_ratio is not None and math.isclose(j.target_ratio, float(head),
                                                                            rel_tol=1e-9):
            return "headline"
        return "budgets"

    staged = [replace(j, stage="seeds" if prio and "seeds" in prio and j.seed != first else own_stage(j))
              for j in jobs]
    if not prio:
        return staged
    order = list(prio) + [s for s in STAGES if s not in prio]
    inner = [s for s in order if s != "seeds"]

    def rank(j: Job) -> tuple:
        if j.stage != "seeds":
            return (order.index(j.stage), 0, 0)
        return (order.index("seeds"), j.seed, inner.index(own_stage(j)))

    return sorted(staged, key=rank)


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

