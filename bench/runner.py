"""Runs a suite: dense baselines once per group, then compress -> evaluate -> fine-tune ->
evaluate -> record for every job not already done. Several devices run groups concurrently
in worker processes; only this process writes records, so resume stays exact."""
from __future__ import annotations

import copy
import os
import platform
import subprocess
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from bench.baseline import get_baseline
from bench.compressor import BudgetUnreachable, FinetuneContext, dense_params, get_layer
from bench.data import DataSplits, load_splits
from bench.metrics import count_params, fit_errors, forward_flops
from bench.records import append_record, config_key, done_keys
from bench.registry import get_method
from bench.suite import Job
from bench.train import evaluate, resolve_device, train

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunSettings:
    out: Path
    data_dir: Path | None
    download: bool = True
    progress: bool = True


def code_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "host_cpu": platform.machine(), "threads": torch.get_num_threads()}
    try:
        import tensorly
        env["tensorly"] = tensorly.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def records_path(out: Path, suite_name: str, fit_only: bool) -> Path:
    return Path(out) / suite_name / ("fit_runs.jsonl" if fit_only else "runs.jsonl")


def job_fields(job: Job) -> dict[str, Any]:
    """The fields of a record that say which job it is."""
    return {"key": job.key, "suite": job.suite, "network": job.network, "dataset": job.dataset,
            "method": job.method, "label": job.label, "options": job.options, "target_ratio": job.target_ratio,
            "budget": job.budget, "seed": job.seed, "layers": job.layers, "fit_only": job.fit_only,
            "train": job.train, "finetune": job.finetune, "data": job.data}


def memo_key(job: Job, knobs: dict[str, Any]) -> str:
    """Jobs of one baseline with equal memo keys would train the same network the same way."""
    return config_key({"method": job.method, "options": job.options, "knobs": knobs})


def failed_record(job: Job, error: str) -> dict[str, Any]:
    """The record of a job that never reached ``run_job`` (its baseline failed, its task died)."""
    return {**job_fields(job), "status": "failed", "error": error}


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
    from bench.data import SHAPES
    from bench.models import build_network

    if (job.network, job.dataset) not in networks:
        shape, classes = SHAPES[job.dataset]
        networks[(job.network, job.dataset)] = build_network(job.network, shape, classes)
    model = networks[(job.network, job.dataset)]
    method = get_method(job.method, **job.options)
    layers = {n: get_layer(model, n) for n in job.layers}
    plan = Plan(method, layers, skip_reason=method.skip_reason(model, job.layers))
    if plan.skip_reason is None and (job.knob is not None or not method.allocation_uses_weights):
        plan.knobs = ({n: job.knob for n in layers} if job.knob is not None
                      else method.allocate(layers, job.target_ratio))
    return plan


def reused_record(job: Job, earlier: dict[str, Any]) -> dict[str, Any]:
    """``job``'s record made from an identical earlier job's measurements (``same_as``)."""
    return {**earlier, **job_fields(job), "same_as": earlier["key"], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "time_total_s": 0.0}


def run_job(job: Job, base_model: torch.nn.Module, base_meta: dict, data: DataSplits,
            progress: bool = True, memo: dict | None = None) -> dict[str, Any]:
    """One job's record. Never raises for a method's failure: the record says ``failed``.

    ``memo`` maps (method, options, knobs) to an earlier record of the same baseline: a budget
    whose allocation equals an earlier one (a ratio beyond what a method can reach) reuses its
    measurements instead of training the same network again, and says so (``same_as``)."""
    device = data.x_train.device
    rec: dict[str, Any] = {
        **job_fields(job), "data_fingerprint": data.fingerprint, "data_source": data.source, "data_warnings": data.warnings,
        "acc_dense": base_meta["acc_test"], "status": "ok", "error": None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t_start = time.perf_counter()
    try:
        method = get_method(job.method, **job.options)
        model = copy.deepcopy(base_model)
        originals = {n: copy.deepcopy(get_layer(model, n)) for n in job.layers}
        reason = method.skip_reason(model, job.layers)
        if reason:
            rec.update(status="skipped", error=reason)
            return rec
        try:
            knobs = ({n: job.knob for n in job.layers} if job.knob is not None
                     else method.allocate(originals, job.target_ratio))
        except BudgetUnreachable as e:
            rec.update(status="skipped", error=f"budget unreachable: {e}")
            return rec
        mkey = memo_key(job, knobs)
        if memo is not None and mkey in memo:
            return reused_record(job, memo[mkey])
        t0 = time.perf_counter()
        info = method.compress(model, knobs)
        rec["time_compress_s"] = time.perf_counter() - t0
        fit, fit_per_layer = fit_errors(originals, {n: get_layer(model, n) for n in job.layers})
        rec.update(fit_rel_error=fit, knobs=knobs, params_counted_as=method.params_counted_as)
        if not job.fit_only:
            rec["acc_before_finetune"] = evaluate(model, data.x_test, data.y_test)
            ctx = FinetuneContext(
                train=lambda m, epochs=None: train(m, data, job.finetune, seed=job.seed, epochs=epochs,
                                                   desc=f"finetune {job.label} {job.budget}", progress=progress),
                epochs=job.finetune["epochs"], layer_names=list(job.layers), dense_layers=originals,
                knobs=knobs, method=method, data=data, device=device)
            t0 = time.perf_counter()
            method.finetune(model, ctx)
            rec["time_finetune_s"] = time.perf_counter() - t0
            rec["acc_after_finetune"] = evaluate(model, data.x_test, data.y_test)
            rec["extras"] = ctx.extras
        final = {n: get_layer(model, n) for n in job.layers}
        per_layer = {}
        for n in job.layers:
            per_layer[n] = {"knob": knobs[n], "params_dense": dense_params(originals[n]),
                            "params": method.module_params(final[n]), "fit_rel_error": fit_per_layer[n],
                            **info.get(n, {})}
        params_dense = sum(v["params_dense"] for v in per_layer.values())
        params_comp = sum(v["params"] for v in per_layer.values())
        rest = count_params(model) - sum(count_params(m) for m in final.values())
        rec.update(layer_info=per_layer, params_dense_layers=params_dense, params_compressed_layers=params_comp,
                   achieved_ratio=params_dense / params_comp if params_comp else float("inf"),
                   params_total=rest + params_comp, params_total_dense=count_params(base_model),
                   flops=forward_flops(model, data.input_shape, device),
                   flops_dense=forward_flops(base_model, data.input_shape, device))
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=6)[-3000:])
    finally:
        rec["time_total_s"] = time.perf_counter() - t_start
    if memo is not None and rec["status"] == "ok":
        memo[mkey] = rec
    return rec


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by dense baseline, so each baseline is trained (or loaded) once."""
    by_base: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_base[config_key(j.baseline_config)].append(j)
    return list(by_base.values())


def run_groups(groups: list[list[Job]], settings: RunSettings, device: torch.device) -> Iterator[dict]:
    """Yield one record per job, in order, on one device."""
    data_cache: dict[str, DataSplits] = {}
    env = environment(device)
    version = code_version()
    for group in groups:
        first = group[0]
        dkey = config_key({"dataset": first.dataset, "data": first.data})
        try:
            if dkey not in data_cache:
                data_cache[dkey] = load_splits(first.dataset, settings.data_dir, first.data["val_fraction"],
                                               first.data["train_subset"], settings.download).to(device)
            data = data_cache[dkey]
            base_model, base_meta = get_baseline(settings.out, first.baseline_config, data, settings.progress)
        except Exception as e:  # noqa: BLE001 - every job of the group fails with the reason
            for job in group:
                yield {**failed_record(job, f"dense baseline: {type(e).__name__}: {e}"),
                       "code_version": version, "env": env}
            continue
        memo: dict[str, dict] = {}
        for job in group:
            torch.manual_seed(job.seed)
            rec = run_job(job, base_model, base_meta, data, settings.progress, memo)
            rec.update(code_version=version, env=env, acc_dense_val=base_meta.get("acc_val"))
            yield rec


def _worker(device_spec: str, groups: list[list[Job]], settings: RunSettings, queue, threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        for rec in run_groups(groups, RunSettings(**{**settings.__dict__, "progress": False}),
                              resolve_device(device_spec)):
            queue.put(rec)
    finally:
        queue.put(None)


def _run_parallel(groups, settings, devices) -> Iterator[dict]:
    """One worker process per device; groups dealt round-robin by size; records come back here."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shares: list[list[list[Job]]] = [[] for _ in devices]
    for g in sorted(groups, key=len, reverse=True):
        shares[min(range(len(devices)), key=lambda k: sum(len(x) for x in shares[k]))].append(g)
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if all(d.startswith("cpu") for d in devices) \
        else torch.get_num_threads()
    procs = [ctx.Process(target=_worker, args=(d, s, settings, queue, threads), daemon=True)
             for d, s in zip(devices, shares) if s]
    for p in procs:
        p.start()
    running = len(procs)
    try:
        while running:
            rec = queue.get()
            if rec is None:
                running -= 1
            else:
                yield rec
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def run_jobs(jobs: list[Job], settings: RunSettings, devices: list[str], path: Path,
             backend: str = "local", address: str | None = None, plugins: list[str] | None = None,
             rerun: bool = False) -> dict[str, int]:
    """Run the jobs that have no ok/skipped record yet (all of them with ``rerun``); append each
    record as it finishes. A key's latest record is the one reports use.

    ``backend``: "local" (this process, or one worker per device) or "ray" (bench/ray_backend.py)."""
    done = set() if rerun else done_keys(path)
    todo = [j for j in jobs if j.key not in done]
    counts = {"total": len(jobs), "already_done": len(jobs) - len(todo), "ok": 0, "failed": 0, "skipped": 0}
    if not todo:
        return counts
    groups = _groups(todo)
    if backend == "ray":
        from bench.ray_backend import run_ray

        stream = run_ray(groups, settings, address, plugins)
    elif len(devices) == 1:
        stream = run_groups(groups, settings, resolve_device(devices[0]))
    else:
        stream = _run_parallel(groups, settings, devices)
    bar = tqdm(total=len(todo), desc="jobs", unit="job", disable=not settings.progress)
    for rec in stream:
        append_record(path, rec)
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        if rec["status"] == "failed":
            tqdm.write(f"FAILED {rec['network']}/{rec['dataset']} {rec['label']} {rec['budget']} "
                       f"seed {rec['seed']}: {rec['error']}")
        finished = counts["ok"] + counts["failed"] + counts["skipped"]
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"],
                        running_or_queued=len(todo) - finished)
        bar.update()
    bar.close()
    return counts
