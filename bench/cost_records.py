"""Estimates against what ran: a record's measured seconds per stage, the model's estimate of the
same jobs beside them (the dry run's "estimated / measured" line), and whether a job's dense
baseline checkpoint is already on disk.

Why a module of its own (issue #22): these read records and checkpoint summaries, which the
estimates themselves (``bench.cost_model``) never do.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from bench.cost_corrections import ANY, cell
from bench.cost_model import STAGES, CostModel


def record_stages(record: dict[str, Any], baseline_meta: dict[str, Any] | None = None) -> dict[str, float]:
    """A record's measured seconds per stage, to set beside ``CostModel.stages``: cache, factorize
    (allocation + compression, as ``CostModel.factorize_s`` estimates it) and finetune as timed,
    eval the rest of ``time_total_s``; baseline from the checkpoint's summary (``baseline_meta``)
    when given. Records made before ``time_allocate_s`` existed count their allocation in eval."""
    cache = float(record.get("time_prefix_cache_s") or 0.0)
    fact = float(record.get("time_compress_s") or 0.0) + float(record.get("time_allocate_s") or 0.0)
    fine = float(record.get("time_finetune_s") or 0.0)
    total = float(record.get("time_total_s") or 0.0)
    return {"baseline": float((baseline_meta or {}).get("time_train_s") or 0.0), "cache": cache,
            "factorize": fact, "finetune": fine, "eval": max(0.0, total - cache - fact - fine)}


def measured_alone(records: dict[str, dict], jobs: list) -> Iterator[tuple[Any, dict, bool]]:
    """(job, its ok record, whether it tuned) for each job whose record measured the job itself:
    not a ``same_as`` copy nor ``reused_from`` another suite."""
    for j in jobs:
        rec = records.get(j.key)
        if not rec or rec.get("status") != "ok" or rec.get("same_as") or rec.get("reused_from"):
            continue
        yield j, rec, bool((rec.get("lr_tuning") or {}).get("tuned_here"))


def ran_trials(record: dict[str, Any]) -> int | None:
    """The fine-tuning runs a tuning record made (every optimizer@lr it judged, edge extensions
    included: 6-9 on the CIFAR records where the model expects 8), or None when it did not tune."""
    tuning = record.get("lr_tuning") or {}
    return len(tuning.get("val_acc") or {}) or None if tuning.get("tuned_here") else None


def estimated_as_ran(model: CostModel, job, record: dict[str, Any], tuned: bool) -> dict[str, float]:
    """``model``'s seconds per stage of ``job`` as its ``record`` ran it: tuned or not, with the
    trials it made (``ran_trials``), paying for the frozen-prefix cache when it built one (not
    when it took it from memory or loaded its file: ``bench.prefix_store``; its baseline apart)."""
    built = (record.get("time_prefix_cache_s") or 0) > 0 and record.get("prefix_cache_from", "built") == "built"
    return model.stages(job, tuned, with_cache=built, trials=ran_trials(record) if tuned else None)


def compare_records(model: CostModel, jobs: list, records: dict[str, dict], baseline_root: Path
                    ) -> tuple[int, dict[str, float], dict[str, float]]:
    """(jobs compared, estimated and measured seconds per stage) over the jobs with an ok
    record measured by themselves (``measured_alone``), each estimated as it ran: tuned when
    its record tuned, the cache when it built one; baselines whose checkpoint summary is under
    ``baseline_root`` once each."""
    est, got = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    measured = list(measured_alone(records, jobs))
    for j, rec, tuned in measured:
        for stage, t in estimated_as_ran(model, j, rec, tuned).items():
            est[stage] += t
        for stage, t in record_stages(rec).items():
            got[stage] += t
    for j, seconds in measured_baselines([j for j, _, _ in measured], baseline_root).values():
        est["baseline"] += model.baseline_s(j)
        got["baseline"] += seconds
    return len(measured), est, got


def measured_baselines(jobs: list, root: Path) -> dict[str, tuple[Any, float]]:
    """Baseline key -> (a job of it, its measured ``time_train_s``) for the jobs' baselines whose
    checkpoint summary is under ``root``."""
    from bench.baseline import checkpoint_path

    out: dict[str, tuple[Any, float]] = {}
    for j in jobs:
        meta = checkpoint_path(root, j.baseline_config).with_suffix(".json")
        if j.baseline_key not in out and meta.is_file():
            out[j.baseline_key] = (j, record_stages({}, json.loads(meta.read_text()))["baseline"])
    return out


def baseline_cached(root: Path, job) -> bool:
    """Whether ``job``'s dense baseline is already trained under ``root`` (checkpoint pair)."""
    from bench.baseline import checkpoint_path, has_checkpoint

    return has_checkpoint(checkpoint_path(root, job.baseline_config))


def ratios(model, pairs, baselines: dict[str, tuple[Any, float]] | None = None
           ) -> dict[tuple[str, str, str], list[float]]:
    """measured / estimated per (network, stage, method) over ``pairs`` of (job, record, tuned),
    the estimate from ``model`` (which should carry no corrections); ``baselines``: baseline key
    -> (a job of it, measured ``time_train_s``). Stages where either side is 0 say nothing."""
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for job, rec, tuned in pairs:
        for k, r in pair_ratios(model, job, rec, tuned).items():
            out[k].append(r)
    for job, got in (baselines or {}).values():
        est = model.baseline_s(job)
        if est > 0 and got > 0:
            out[(job.network, "baseline", ANY)].append(got / est)
    return dict(out)


def pair_ratios(model, job, rec: dict[str, Any], tuned: bool) -> dict[tuple[str, str, str], float]:
    """One record's measured / estimated per (network, stage, method) and per (network, stage,
    its ``cell``), the stages either side says nothing of (0) left out."""
    est, out = estimated_as_ran(model, job, rec, tuned), {}
    for stage, got in record_stages(rec).items():
        if stage != "baseline" and est[stage] > 0 and got > 0:
            out[(job.network, stage, job.method)] = out[(job.network, stage, cell(job))] = got / est[stage]
    return out
