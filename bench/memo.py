"""One measurement, one run. Two jobs of one baseline whose configs differ only in the budget
(``target_ratio``, ``knob``, the ``allocation`` split: they act only through the knobs they
resolve to), with equal knobs and lr pick, train the same network the same way: the later one
is recorded as a copy of the earlier (``same_as``), within a sweep and across sweeps
(``recorded_memos``: an interrupted sweep resumed, records adopted from another suite).
"""
from __future__ import annotations

import time
from typing import Any

from bench.allocation import without_allocation
from bench.jobs import BUDGET_FIELDS, Job, job_fields, measured_recipe
from bench.records import OPTIONAL_CONFIG_FIELDS, config_key


def memo_key(job: Job, knobs: dict[str, Any], lr_pick=None) -> str:
    """Jobs of one baseline with equal memo keys would train the same network the same way:
    their whole config but the budget (``target_ratio``, ``knob``, the ``allocation`` option) in
    favour of the ``knobs`` it resolved to, the recipe as far as it decides the result (``measured_recipe``), and the lr
    pick. ``lr_pick``: a pick, or the tuning seed's picks best first (its first decides)."""
    if isinstance(lr_pick, list):
        lr_pick = lr_pick[0] if lr_pick else None
    cfg = {k: v for k, v in job.config().items() if k not in BUDGET_FIELDS}
    # the budget split (bench.allocation) acts only through the knobs it picks: tt with the
    # min-max split on a network with one compressed layer is tt's uniform job
    cfg["options"] = without_allocation(job.options)
    recipe = measured_recipe(job.method, job.finetune)
    if not job.fit_only and recipe is not job.finetune:  # NN-BCD: the epoch count goes, so does the tuning one
        cfg.pop("tune_epochs", None)
        cfg["finetune"] = recipe
    return config_key({**cfg, "knobs": knobs, "lr_pick": lr_pick})


def recorded_memos(jobs: list[Job], latest: dict[str, dict], lr_picks: dict[str, list] | None,
                   left_out: set[str] = frozenset()) -> dict[str, dict[str, dict]]:
    """Per baseline key, the memo (``run_job``) of the jobs already recorded ok, from the knobs
    their records hold: so a budget whose allocation equals a recorded one is copied across runs
    too (a sweep resumed after an interruption, records adopted from another suite), not only
    within one. ``left_out``: keys whose records run again (stale, ``bench.stale``)."""
    from bench.plan import pick_for

    memos: dict[str, dict[str, dict]] = {}
    for job in jobs:
        rec = latest.get(job.key)
        if job.key in left_out or not rec or rec.get("status") != "ok" or not rec.get("knobs"):
            continue
        mkey = memo_key(job, rec["knobs"], pick_for(job, lr_picks))
        memos.setdefault(job.baseline_key, {}).setdefault(mkey, rec)
    return memos


def reused_record(job: Job, earlier: dict[str, Any]) -> dict[str, Any]:
    """``job``'s record made from an identical earlier job's measurements (``same_as``). The
    earlier job's optional config fields go: ``job`` may not have them (tt copying tt-minmax's
    ``minmax_rule``), and a record's config must hash to its own key."""
    measured = {k: v for k, v in earlier.items() if k not in OPTIONAL_CONFIG_FIELDS}
    return {**measured, **job_fields(job), "same_as": earlier["key"], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "time_total_s": 0.0}
