"""The local backend: groups of jobs run in this process on one device, or in one worker
process per device. A worker that dies is noticed (its unfinished jobs come back as failed
records), so a sweep never waits forever on a dead worker."""
from __future__ import annotations

import contextlib
import os
import queue as queue_module
import signal
import sys
import time
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from bench.backends import CLAIMED, HANDED, LEFT, Marker, Outcome, key_of
from bench.baseline import BaselineInTraining, get_baseline, in_training
from bench.cpu_memory import keep_freed_memory
from bench.data import DataSplits, load_splits
from bench.job import failed_record, run_job
from bench.planning import planned_memo_key
from bench.prefix_store import PrefixStore
from bench.start_store import StartStore
from bench.trial_journal import TrialJournals, TrialsLeftForLater
from bench.records import OutputWriteError, config_key
from bench.jobs import Job
from bench.plan import pick_for
from bench.train import resolve_device

HANDED_POLL_S = 10.0  # how often a sweep with only handed jobs left looks whether their baseline is saved
_sleep = time.sleep  # the poll's pause (a test replaces it, not time.sleep for every module)



def device_info(device: torch.device) -> dict[str, Any]:
    """What a worker adds to the driver's environment stamp: where the job ran."""
    info = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cpu":
        info["heap_keeps_freed"] = keep_freed_memory()
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


class HandedToTrainers:
    """Jobs a sweep handed to the process training their baseline (``BaselineInTraining``), by
    baseline, in order, with their lr picks. Before each later job the sweep takes back the
    jobs whose baseline is trained by then (``take_back``), so it serves the group its priority
    put first instead of leaving the whole group to the trainer (in-process local backend; kept
    across the runner's passes). A sweep with nothing else to run waits for the trainer (polls
    every ``HANDED_POLL_S``) and then shares the group, rather than leaving a core idle; a
    trainer that dies stops counting as training, so the wait ends and this sweep trains it."""

    def __init__(self) -> None:
        self.groups: dict[str, list[tuple[Job, Any]]] = {}

    def hand(self, jobs: list[tuple[Job, Any]]) -> None:
        self.groups.setdefault(jobs[0][0].baseline_key, []).extend(jobs)

    def take_back(self, root) -> list[list[tuple[Job, Any]]]:
        """The groups whose baseline no live process is training any more, removed from here."""
        ready = [k for k, jobs in self.groups.items() if not in_training(root, jobs[0][0].baseline_config)]
        return [self.groups.pop(k) for k in ready]

    def drain(self) -> list[Job]:
        """Every job still here, removed."""
        jobs = [j for group in self.groups.values() for j, _ in group]
        self.groups.clear()
        return jobs


def run_groups(groups: list[list[Job]], settings, device: torch.device,
               claim: Callable[[Job], bool] | None = None,
               lr_picks: dict[str, list] | None = None,
               gate: Callable[[Job], bool] | None = None,
               memos: dict[str, dict[str, dict]] | None = None,
               handed: HandedToTrainers | None = None) -> Iterator[Outcome]:
    """Yield one record per job, in order, on one device. ``claim(job)`` False means another
    sweep runs it (a ``CLAIMED`` marker is yielded); a group's baseline is loaded only once one
    of its jobs is claimed, and while another process trains it the group is left to that
    process (its jobs released, ``CLAIMED`` markers; with ``handed``, ``HANDED`` markers and the
    jobs kept there, taken back and run before a later job once the baseline is trained, or
    waited for after the last one).
    ``lr_picks`` maps a job's tune key to the picks of its tuning seed, best first
    (``bench.runner.lr_picks``). ``gate(job)`` (the time budget, ``bench.cost.Budget``) is asked
    just before a job starts; False yields a ``LEFT`` marker. A budget that offers
    ``room_for_trial`` admits a tuning job with room for one trial and stops it before a trial
    that does not fit (its finished trials kept: ``bench.trial_journal``; a ``LEFT`` marker). ``memos``: per baseline key, the
    records a job with an equal allocation copies (``bench.memo.recorded_memos``); kept across
    the groups of one baseline, and what runs here is added."""
    data_cache: dict[str, DataSplits] = {}
    if device.type == "cpu":
        keep_freed_memory()  # large tensors stop page-faulting every step (bench.cpu_memory)
    info = device_info(device)
    memos = {k: dict(v) for k, v in (memos or {}).items()}  # the caller's stay as they were
    untrained: dict = {}  # networks to plan on, for copies a time budget need not ask about
    journals = TrialJournals(settings.baseline_root)  # where tuning jobs keep finished trials
    starts = StartStore(settings.baseline_root)  # where slow compressions keep their starts
    room = getattr(gate, "room_for_trial", None)  # a search's trials may end at the budget's end

    def admitted(job: Job) -> bool:
        return gate(job, by_trial=True) if room is not None else gate(job)

    def taken_back() -> Iterator[Outcome]:
        for jobs in handed.take_back(settings.baseline_root) if handed is not None else []:
            yield from run_group(jobs)

    def copy_in_flight(job: Job, pick, group: list[tuple[Job, Any]]) -> bool:
        """Whether an earlier job of ``group`` with the same planned measurement (``bench.memo``:
        equal allocation and recipe) is running in another live sweep (not this one's workers,
        whose claims the driver releases a moment later): this job is then its copy,
        which that sweep makes when it gets here (the same list, in order); running it here too
        would measure the same thing twice at once (two sweeps on ADTN's x2 and x8, both depth 8)."""
        claims = getattr(claim, "claims", None)
        if claims is None:
            return False
        held = []  # claim files first: the allocations are planned only when another sweep runs one
        for earlier, earlier_pick in group:
            if earlier.key == job.key:
                break
            if claims.held_elsewhere(earlier.key):
                held.append((earlier, earlier_pick))
        mkey = planned_memo_key(job, untrained, pick) if held else None
        return mkey is not None and any(planned_memo_key(e, untrained, p) == mkey for e, p in held)

    def release(job: Job) -> None:
        """Give up ``job``'s claim (held by this process) so another run can take it."""
        if getattr(claim, "claims", None) is not None:
            claim.claims.release(job.key)

    def run_group(group: list[tuple[Job, Any]]) -> Iterator[Outcome]:
        first, base = group[0][0], None
        memo = memos.setdefault(first.baseline_key, {})
        prefix_caches = PrefixStore(settings.baseline_root)  # the group's frozen-prefix cache, kept beside its checkpoint
        for i, (job, pick) in enumerate(group):
            yield from taken_back()
            if gate is not None and not _a_copy(job, memo, pick, untrained) and not admitted(job):
                yield Marker(job.key, LEFT)
                continue
            if claim is not None and (copy_in_flight(job, pick, group) or not claim(job)):
                yield Marker(job.key, CLAIMED)
                continue
            if base is None:
                try:
                    base = _baseline(first, settings, device, data_cache)
                except BaselineInTraining as e:  # the trainer's sweep runs the group when it is done
                    base = e
                except OutputWriteError:
                    raise  # a full disk: stop the sweep (one line, exit 2), not fail every job after it
                except Exception as e:  # noqa: BLE001 - every job of the group fails with the reason
                    base = e
                else:
                    on_this_baseline(memo, base[1])
            if isinstance(base, BaselineInTraining):
                release(job)  # the trainer's sweep claims it when its baseline is done
                if handed is not None:
                    handed.hand(group[i:])
                    yield from (Marker(j.key, HANDED) for j, _ in group[i:])
                    return
                yield Marker(job.key, CLAIMED)
                continue
            if isinstance(base, Exception):
                yield {**failed_record(job, f"dense baseline: {type(base).__name__}: {base}"), "env": info}
                continue
            model, meta, data = base
            torch.manual_seed(job.seed)
            try:
                with claim.holding(job) if claim is not None else contextlib.nullcontext():
                    rec = run_job(job, model, meta, data, settings.progress, memo, lr_pick=pick,
                                  prefix_caches=prefix_caches, journals=journals, starts=starts,
                                  trial_room=room(job) if room is not None else None)
            except TrialsLeftForLater:
                release(job)  # a later run (or another sweep) goes on from its trials
                yield Marker(job.key, LEFT)
                continue
            rec["env"] = info
            yield rec

    for group in groups:
        yield from run_group([(job, pick_for(job, lr_picks)) for job in group])
    if handed is not None and handed.groups:  # nothing else to run here: wait, then share them
        names = [f"{j.network}/{j.dataset} seed {j.seed}" for j, _ in (g[0] for g in handed.groups.values())]
        tqdm.write(f"waiting for another process to train the baseline of {', '.join(names)}; "
                   "its jobs are shared once it is saved", file=sys.stderr)
        while handed.groups:
            _sleep(HANDED_POLL_S)
            yield from taken_back()


def on_this_baseline(memo: dict, meta: dict) -> None:
    """Drop from ``memo`` the records made on another baseline than the one just loaded or
    trained (``meta``): records taken before its checkpoint existed (adopted, or made on another
    machine) are no measurement of this baseline, so no job is recorded as their copy."""
    fp = meta.get("weights_fingerprint")
    for key in [k for k, rec in memo.items() if rec.get("baseline_fingerprint") not in (None, fp)]:
        del memo[key]


def _a_copy(job: Job, memo: dict, pick, untrained: dict) -> bool:
    """Whether ``job`` will copy a measurement already in ``memo`` (free: a time budget does
    not ask about it), as far as its allocation can be planned on untrained weights."""
    if not memo:
        return False
    mkey = planned_memo_key(job, untrained, pick)
    return mkey is not None and mkey in memo


def _baseline(job: Job, settings, device: torch.device, cache: dict) -> tuple[Any, dict, DataSplits]:
    dkey = config_key({"dataset": job.dataset, "data": job.data})
    if dkey not in cache:
        cache[dkey] = load_splits(job.dataset, settings.data_dir, job.data["val_fraction"],
                                  job.data["train_subset"], settings.download).to(device)
    model, meta = get_baseline(settings.baseline_root, job.baseline_config, cache[dkey], settings.progress,
                               wait=False)
    return model, meta, cache[dkey]


def _worker(wid: int, device_spec: str, groups, settings, out_queue, threads: int, claims, lr_picks,
            plugins, gate=None, memos=None) -> None:
    from bench.registry import load_plugin

    _die_with_parent()
    torch.set_num_threads(threads)
    claim = claims.claimer() if claims is not None else None
    try:
        for spec in plugins or []:  # a spawned worker starts from scratch: methods from plugins too
            load_plugin(spec)
        for rec in run_groups(groups, settings.quiet(), resolve_device(device_spec), claim, lr_picks, gate,
                              memos):
            out_queue.put(("rec", wid, rec))
    except BaseException as e:  # noqa: BLE001 - the driver fails this worker's remaining jobs with it
        out_queue.put(("error", wid, f"{type(e).__name__}: {e}"))
    finally:
        out_queue.put(("done", wid, None))


def _die_with_parent() -> None:
    """A worker whose driver is killed (SIGKILL, the OOM killer) must not run on: nobody would
    receive its records, and its live claims would hold the jobs from a resume. Linux: ask the
    kernel for SIGKILL when the parent dies; elsewhere the driver's daemon flag is all there is."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the driver died before the request took effect
        os._exit(1)


def deal(groups: list[list[Job]], n: int) -> list[list[list[Job]]]:
    """Groups dealt to ``n`` workers, largest first, each to the least loaded."""
    shares: list[list[list[Job]]] = [[] for _ in range(n)]
    for g in sorted(groups, key=len, reverse=True):
        shares[min(range(n), key=lambda k: sum(len(x) for x in shares[k]))].append(g)
    return shares


def run_parallel(groups, settings, devices: list[str], claims=None, lr_picks=None, plugins=None,
                 poll_s: float = 1.0, gate=None, memos=None) -> Iterator[Outcome]:
    """One worker process per device; records come back here. A worker that exits without
    saying it is done has died: its jobs with no record yet are yielded as failed. ``gate``:
    each worker gets a copy of the time budget (remaining time is read from the shared
    clock; each copy pays for the baselines of its own groups)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    shares = deal(groups, len(devices))
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if all(d.startswith("cpu") for d in devices) \
        else torch.get_num_threads()
    procs: dict[int, Any] = {}
    queues: dict[int, Any] = {}  # one per worker: a worker killed while it holds its queue's
    pending: dict[int, dict[str, Job]] = {}  # lock then blocks only its own queue, not the others'
    for wid, (d, share) in enumerate(zip(devices, shares)):
        if share:
            queues[wid] = ctx.Queue()
            procs[wid] = ctx.Process(target=_worker, args=(wid, d, share, settings, queues[wid], threads, claims,
                                                           lr_picks, plugins, gate, memos), daemon=True)
            pending[wid] = {j.key: j for g in share for j in g}
    for p in procs.values():
        p.start()
    running = set(procs)
    errors: dict[int, str] = {}
    try:
        while running:
            got = False
            for wid in list(running):
                try:
                    kind, _, rec = queues[wid].get_nowait()
                except queue_module.Empty:
                    continue
                got = True
                yield from _handle(kind, wid, rec, pending, running, errors, devices)
            if got:
                continue
            for wid in [w for w in running if not procs[w].is_alive()]:
                yield from _drain(queues[wid], pending, running, errors, devices)
                if wid in running:  # no "done" came: the worker died
                    running.discard(wid)
                    errors[wid] = f"died (exit code {procs[wid].exitcode})"
                    yield from _orphans(wid, pending, errors, devices)
            time.sleep(min(poll_s, 0.05))
    finally:
        for p in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def _handle(kind, wid, msg, pending, running, errors, devices) -> Iterator[Outcome]:
    if kind == "error":
        errors[wid] = f"stopped: {msg}"
    elif kind == "done":
        running.discard(wid)
        yield from _orphans(wid, pending, errors, devices)
    else:
        pending[wid].pop(key_of(msg), None)
        yield msg


def _orphans(wid, pending, errors, devices) -> Iterator[Outcome]:
    """Failed records for the jobs a stopped or dead worker never reported."""
    for job in pending.pop(wid, {}).values():
        yield failed_record(job, f"worker for device {devices[wid]} {errors.get(wid, 'stopped')} "
                                 f"before finishing this job")


def _drain(out_queue, pending, running, errors, devices) -> Iterator[Outcome]:
    """Whatever a finished or dead worker put on the queue before it went."""
    while True:
        try:
            kind, wid, msg = out_queue.get(timeout=0.2)
        except queue_module.Empty:
            return
        yield from _handle(kind, wid, msg, pending, running, errors, devices)
