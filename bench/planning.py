"""Jobs planned without data or training: their knobs on an untrained network of the right shape
(dry runs, Ray's reuse of identical allocations), and what a sweep of them would share: the
measurements it would copy (``planned_copies``, ``bench.memo``) and the compressed starts it
would load (``planned_loaded_starts``, ``bench.start_store``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.allocation import without_allocation
from bench.jobs import Job
from bench.layers import get_layer
from bench.memo import memo_key
from bench.records import config_key
from bench.registry import dataset_spec, get_method


@dataclass
class Plan:
    """A job planned on an untrained network of its shape: ``knobs`` when the allocation needs
    no trained weights, else None; ``skip_reason`` when the method does not apply."""

    method: Any
    layers: dict[str, torch.nn.Module]
    knobs: dict[str, Any] | None = None
    skip_reason: str | None = None


def plan_on_untrained(job: Job, networks: dict) -> Plan:
    """Plan ``job`` without data or training (dry runs, Ray's reuse of identical allocations).
    ``networks`` caches one untrained network per (network, dataset). Errors of the method's
    ``allocate`` propagate."""
    from bench.models import build_network

    if (job.network, job.dataset) not in networks:
        spec = dataset_spec(job.dataset)
        networks[(job.network, job.dataset)] = build_network(job.network, spec.shape, spec.classes)
    model = networks[(job.network, job.dataset)]
    method = get_method(job.method, **job.options)
    layers = {n: get_layer(model, n) for n in job.layers}
    plan = Plan(method, layers, skip_reason=method.skip_reason(model, job.layers))
    if plan.skip_reason is None and (job.knob is not None or not method.allocation_uses_weights):
        plan.knobs = ({n: job.knob for n in layers} if job.knob is not None
                      else method.allocate(layers, job.target_ratio))
    return plan


def planned_memo_key(job: Job, networks: dict, lr_pick=None) -> str | None:
    """``job``'s memo key (``bench.memo``) when its allocation can be planned without trained
    weights, else None (Ray then runs it as its own task; a time budget then asks about it)."""
    try:
        knobs = plan_on_untrained(job, networks).knobs
    except Exception:  # noqa: BLE001 - the job then runs, and records what went wrong
        return None
    return None if knobs is None else memo_key(job, knobs, lr_pick)


def planned_copies(jobs: list[Job], networks: dict) -> dict[str, str]:
    """Job key -> the key of an earlier job of the list whose measurement it would copy
    (``same_as``), as far as allocations can be planned on untrained weights (``plan_on_untrained``;
    not ALDS's or global pruning's). A job that reuses its tuning seed's pick is a copy when its
    tuning job is one too: equal tuning jobs pick the same. For dry runs and their estimates."""
    from bench.plan import tuning_job

    planned: dict[str, str | None] = {}

    def key_of(job: Job) -> str | None:
        if job.key not in planned:
            try:
                knobs = plan_on_untrained(job, networks).knobs
            except Exception:  # noqa: BLE001 - the run records what goes wrong; here: no copy
                knobs = None
            pick = None
            if knobs is not None and job.reuses_pick:
                tuner = key_of(tuning_job(job))
                knobs, pick = (None, None) if tuner is None else (knobs, f"the picks of {tuner}")
            planned[job.key] = None if knobs is None else f"{job.baseline_key}/{memo_key(job, knobs, pick)}"
        return planned[job.key]

    first: dict[str, str] = {}
    copies = {}
    for job in jobs:
        mkey = key_of(job)
        if mkey is None:
            continue
        if mkey in first:
            copies[job.key] = first[mkey]
        else:
            first[mkey] = job.key
    return copies


def planned_loaded_starts(jobs: list[Job], networks: dict) -> set[str]:
    """Keys of the jobs that would load a compressed start an earlier job of the list keeps
    (``bench.start_store``: a method that says ``caches_start``, the same baseline, options, layers,
    knobs and seed; another epoch count). For dry runs and their estimates."""
    seen, loaded = set(), set()
    for job in jobs:
        try:
            plan = plan_on_untrained(job, networks)
        except Exception:  # noqa: BLE001 - the run records what goes wrong; here: nothing shared
            continue
        if not plan.method.caches_start or plan.knobs is None:
            continue
        start = config_key({"baseline": job.baseline_key, "method": job.method, "layers": job.layers,
                            "options": without_allocation(job.options),
                            "knobs": plan.knobs, "seed": job.seed})
        if start in seen:
            loaded.add(job.key)
        seen.add(start)
    return loaded
