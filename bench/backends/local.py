"""The local backend: groups of jobs run in this process on one device, or in one worker
process per device. A worker that dies is noticed (its unfinished jobs come back as failed
records), so a sweep never waits forever on a dead worker."""
from __future__ import annotations

import contextlib
import os
import queue as queue_module
from typing import Any, Callable, Iterator

import torch

from bench.baseline import get_baseline
from bench.data import DataSplits, load_splits
from bench.job import failed_record, run_job
from bench.records import config_key
from bench.suite import Job
from bench.train import resolve_device

#: a job another sweep holds; yielded so the driver can count it, never recorded
CLAIMED = "claimed_elsewhere"


def device_info(device: torch.device) -> dict[str, Any]:
    """What a worker adds to the driver's environment stamp: where the job ran."""
    info = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def run_groups(groups: list[list[Job]], settings, device: torch.device,
               claim: Callable[[Job], bool] | None = None,
               lr_picks: dict[str, float] | None = None) -> Iterator[dict]:
    """Yield one record per job, in order, on one device. ``claim(job)`` False means another
    sweep runs it (a ``CLAIMED`` marker is yielded); a group's baseline is loaded only once one
    of its jobs is claimed. ``lr_picks`` maps a job's tune key to the learning rate picked on
    its tuning seed."""
    data_cache: dict[str, DataSplits] = {}
    info = device_info(device)
    for group in groups:
        first, base = group[0], None
        memo: dict[str, dict] = {}
        for job in group:
            if claim is not None and not claim(job):
                yield {"key": job.key, "status": CLAIMED}
                continue
            if base is None:
                try:
                    base = _baseline(first, settings, device, data_cache)
                except Exception as e:  # noqa: BLE001 - every job of the group fails with the reason
                    base = e
            if isinstance(base, Exception):
                yield {**failed_record(job, f"dense baseline: {type(base).__name__}: {base}"), "env": info}
                continue
            model, meta, data = base
            torch.manual_seed(job.seed)
            pick = (lr_picks or {}).get(job.tune_key) if hasattr(job, "tune_key") else None
            with claim.holding(job) if claim is not None else contextlib.nullcontext():
                rec = run_job(job, model, meta, data, settings.progress, memo, lr_pick=pick)
            rec["env"] = info
            yield rec


def _baseline(job: Job, settings, device: torch.device, cache: dict) -> tuple[Any, dict, DataSplits]:
    dkey = config_key({"dataset": job.dataset, "data": job.data})
    if dkey not in cache:
        cache[dkey] = load_splits(job.dataset, settings.data_dir, job.data["val_fraction"],
                                  job.data["train_subset"], settings.download).to(device)
    model, meta = get_baseline(settings.baseline_root, job.baseline_config, cache[dkey], settings.progress)
    return model, meta, cache[dkey]


def _worker(wid: int, device_spec: str, groups, settings, out_queue, threads: int, claims, lr_picks,
            plugins) -> None:
    from bench.registry import load_plugin

    torch.set_num_threads(threads)
    claim = claims.claimer() if claims is not None else None
    try:
        for spec in plugins or []:  # a spawned worker starts from scratch: methods from plugins too
            load_plugin(spec)
        for rec in run_groups(groups, settings.quiet(), resolve_device(device_spec), claim, lr_picks):
            out_queue.put(("rec", wid, rec))
    except BaseException as e:  # noqa: BLE001 - the driver fails this worker's remaining jobs with it
        out_queue.put(("error", wid, f"{type(e).__name__}: {e}"))
    finally:
        out_queue.put(("done", wid, None))


def deal(groups: list[list[Job]], n: int) -> list[list[list[Job]]]:
    """Groups dealt to ``n`` workers, largest first, each to the least loaded."""
    shares: list[list[list[Job]]] = [[] for _ in range(n)]
    for g in sorted(groups, key=len, reverse=True):
        shares[min(range(n), key=lambda k: sum(len(x) for x in shares[k]))].append(g)
    return shares


def run_parallel(groups, settings, devices: list[str], claims=None, lr_picks=None, plugins=None,
                 poll_s: float = 1.0) -> Iterator[dict]:
    """One worker process per device; records come back here. A worker that exits without
    saying it is done has died: its jobs with no record yet are yielded as failed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out_queue = ctx.Queue()
    shares = deal(groups, len(devices))
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if all(d.startswith("cpu") for d in devices) \
        else torch.get_num_threads()
    procs: dict[int, Any] = {}
    pending: dict[int, dict[str, Job]] = {}
    for wid, (d, share) in enumerate(zip(devices, shares)):
        if share:
            procs[wid] = ctx.Process(target=_worker, args=(wid, d, share, settings, out_queue, threads, claims,
                                                           lr_picks, plugins), daemon=True)
            pending[wid] = {j.key: j for g in share for j in g}
    for p in procs.values():
        p.start()
    running = set(procs)
    errors: dict[int, str] = {}
    try:
        while running:
            try:
                kind, wid, rec = out_queue.get(timeout=poll_s)
            except queue_module.Empty:
                for wid in [w for w in running if not procs[w].is_alive()]:
                    yield from _drain(out_queue, pending, running, errors, devices)
                    if wid in running:  # no "done" came: the worker died
                        running.discard(wid)
                        errors[wid] = f"died (exit code {procs[wid].exitcode})"
                        yield from _orphans(wid, pending, errors, devices)
                continue
            yield from _handle(kind, wid, rec, pending, running, errors, devices)
    finally:
        for p in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def _handle(kind, wid, msg, pending, running, errors, devices) -> Iterator[dict]:
    if kind == "error":
        errors[wid] = f"stopped: {msg}"
    elif kind == "done":
        running.discard(wid)
        yield from _orphans(wid, pending, errors, devices)
    else:
        pending[wid].pop(msg["key"], None)
        yield msg


def _orphans(wid, pending, errors, devices) -> Iterator[dict]:
    """Failed records for the jobs a stopped or dead worker never reported."""
    for job in pending.pop(wid, {}).values():
        yield failed_record(job, f"worker for device {devices[wid]} {errors.get(wid, 'stopped')} "
                                 f"before finishing this job")


def _drain(out_queue, pending, running, errors, devices) -> Iterator[dict]:
    """Whatever a finished or dead worker put on the queue before it went."""
    while True:
        try:
            kind, wid, msg = out_queue.get(timeout=0.2)
        except queue_module.Empty:
            return
        yield from _handle(kind, wid, msg, pending, running, errors, devices)
