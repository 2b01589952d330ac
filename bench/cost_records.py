"""Estimates against what ran: a record's measured seconds per stage, the model's estimate of the
same jobs beside them (the dry run's "estimated / measured" line), and whether a job's dense
baseline checkpoint is already on disk.

Why a module of its own (issue #22): these read records and checkpoint summaries, which the
estimates themselves (``bench.cost_model``) never do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.cost_model import STAGES, CostModel


def record_stages(record: dict[str, Any], baseline_meta: dict[str, Any] | None = None) -> dict[str, float]:
    """A record's measured seconds per stage, to set beside ``CostModel.stages``: cache, factorize
    and finetune as timed, eval the rest of ``time_total_s``; baseline from the checkpoint's
    summary (``baseline_meta``) when given."""
    cache = float(record.get("time_prefix_cache_s") or 0.0)
    fact = float(record.get("time_compress_s") or 0.0)
    fine = float(record.get("time_finetune_s") or 0.0)
    total = float(record.get("time_total_s") or 0.0)
    return {"baseline": float((baseline_meta or {}).get("time_train_s") or 0.0), "cache": cache,
            "factorize": fact, "finetune": fine, "eval": max(0.0, total - cache - fact - fine)}


def compare_records(model: CostModel, jobs: list, records: dict[str, dict], baseline_root: Path
                    ) -> tuple[int, dict[str, float], dict[str, float]]:
    """(jobs compared, estimated and measured seconds per stage) over the jobs with an ok
    record measured by themselves (not ``same_as`` or ``reused_from``), each estimated as it
    ran: tuned when its record tuned, the cache when it built one; baselines whose checkpoint
    summary is under ``baseline_root`` once each."""
    from bench.baseline import checkpoint_path

    est, got = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    n, bases = 0, set()
    for j in jobs:
        rec = records.get(j.key)
        if not rec or rec.get("status") != "ok" or rec.get("same_as") or rec.get("reused_from"):
            continue
        n += 1
        tuned = bool((rec.get("lr_tuning") or {}).get("tuned_here"))
        for stage, t in model.stages(j, tuned, with_cache=(rec.get("time_prefix_cache_s") or 0) > 0).items():
            est[stage] += t
        for stage, t in record_stages(rec).items():
            got[stage] += t
        meta = checkpoint_path(baseline_root, j.baseline_config).with_suffix(".json")
        if j.baseline_key not in bases and meta.is_file():
            bases.add(j.baseline_key)
            est["baseline"] += model.baseline_s(j)
            got["baseline"] += record_stages({}, json.loads(meta.read_text()))["baseline"]
    return n, est, got


def baseline_cached(root: Path, job) -> bool:
    """Whether ``job``'s dense baseline is already trained under ``root`` (checkpoint pair)."""
    from bench.baseline import checkpoint_path

    pt = checkpoint_path(root, job.baseline_config)
    return pt.is_file() and pt.with_suffix(".json").is_file()
