"""Ray backend: each job is a Ray task; the driver alone writes records.

Dense baselines are tasks too, one per (network, dataset, seed, recipe); the compression jobs
of that group take the baseline's ObjectRef as an argument, so Ray computes it once and ships
the trained weights through its object store. We use the object store rather than a shared
results directory because the nodes of a cluster need not share a filesystem; the baseline
task still writes its checkpoint to ``--out`` on the node it ran on, as a cache for later runs.

A task whose worker dies is retried by Ray up to ``MAX_RETRIES`` times; after that the job is
recorded ``failed`` with the reason and the sweep goes on. Method errors never kill a worker:
``run_job`` records them as ``failed`` itself.

Budgets beyond a method's reach give the same allocation as a smaller one. The local backend
then reuses the earlier job's measurements (``same_as``); here the driver plans each job whose
allocation needs no trained weights (most methods) on an untrained network, submits one task
per distinct allocation, and records the others from its result. On the mnist suite this saves
a third of the Ray workers' time. Weight-dependent allocations (ALDS, pruning) run as tasks.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.backends import CLAIMED, LEFT, Marker, Outcome
from bench.backends.local import device_info
from bench.cpu_memory import keep_freed_memory
from bench.job import failed_record, run_job
from bench.memo import reused_record
from bench.planning import planned_memo_key
from bench.jobs import Job
from bench.plan import pick_for

REPO = Path(__file__).resolve().parents[2]

MAX_RETRIES = 2
INSTALL_HINT = "--backend ray needs Ray: pip install 'ray[default]' (see README, 'Running on a cluster')"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


def _task_device() -> torch.device:
    """The task's device; on a CPU the heap then keeps freed memory (bench.cpu_memory)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    keep_freed_memory()
    return torch.device("cpu")


def _load_data(job: Job, settings, device: torch.device):
    from bench.data import load_splits

    return load_splits(job.dataset, settings.data_dir, job.data["val_fraction"], job.data["train_subset"],
                       settings.download).to(device)


def _baseline_task(job: Job, settings, plugins: list[str]) -> tuple[dict, dict]:
    """Train (or load) the dense baseline of ``job``'s group; returns CPU weights and summary."""
    from bench.baseline import get_baseline
    from bench.registry import load_plugin

    for p in plugins:
        load_plugin(p)
    data = _load_data(job, settings, _task_device())
    model, meta = get_baseline(settings.baseline_root, job.baseline_config, data, progress=False)
    return {k: v.cpu() for k, v in model.state_dict().items()}, meta


def _job_task(job: Job, baseline: tuple[dict, dict], settings, plugins: list[str],
              lr_pick=None) -> dict[str, Any]:
    from bench.models import build_network
    from bench.prefix_store import PrefixStore
    from bench.start_store import StartStore
    from bench.trial_journal import TrialJournals
    from bench.registry import load_plugin
    from bench.train import prepare_model

    for p in plugins:
        load_plugin(p)
    device = _task_device()
    data = _load_data(job, settings, device)
    state, meta = baseline
    model = build_network(job.network, data.input_shape, data.num_classes)
    model.load_state_dict(state)
    prepare_model(model, device)
    torch.manual_seed(job.seed)
    # one task per job: the group's frozen-prefix cache comes from the file its first job wrote
    rec = run_job(job, model, meta, data, progress=False, lr_pick=lr_pick,
                  prefix_caches=PrefixStore(settings.baseline_root), journals=TrialJournals(settings.baseline_root),
                  starts=StartStore(settings.baseline_root))
    rec.update(env=device_info(device), backend="ray")  # the driver stamps code version and versions
    return rec


def run_ray(groups: list[list[Job]], settings, address: str | None,
            plugins: list[str] | None = None, max_retries: int = MAX_RETRIES, claim=None,
            lr_picks: dict[str, list] | None = None, gate=None,
            memos: dict[str, dict[str, dict]] | None = None) -> Iterator[Outcome]:
    """Submit every job of ``groups``; yield records as tasks finish (in completion order).
    ``claim(job)`` (the driver's job claims) False: another sweep runs it, a ``CLAIMED`` marker
    is yielded and nothing is submitted. ``memos``: per baseline key, recorded measurements a
    job with an equal allocation copies instead of running (``bench.memo.recorded_memos``)."""
    ray = _import_ray()
    plugins = [str(Path(p).resolve()) if p.endswith(".py") else p for p in plugins or []]
    if not ray.is_initialized():
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO)}}
        if address and address != "local":
            runtime_env = {"working_dir": str(REPO), "excludes": [".git", ".venv", "results", "data"]}
        ray.init(address=None if address in (None, "local") else address, runtime_env=runtime_env,
                 include_dashboard=False, log_to_driver=False)
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    settings = settings.quiet(out=Path(settings.out).resolve(), checkpoints=settings.baseline_root.resolve())
    picks = lr_picks or {}
    baseline_remote = ray.remote(max_retries=max_retries, **resources)(_baseline_task)
    job_remote = ray.remote(max_retries=max_retries, **resources)(_job_task)
    claimed: list[str] = []  # the driver claims up front; a heartbeat keeps the claims while tasks run

    def mine(job: Job) -> bool:
        if claim is None or claim(job):
            claimed.append(job.key)
            return True
        return False

    beat = claim.claims.keep_alive(claimed) if claim is not None else contextlib.nullcontext()
    if gate is None:  # no time budget: every job is submitted at once and Ray queues them
        gate, slots = (lambda job: True), max(1, sum(len(g) for g in groups))
    else:  # a budget asks about each job when a slot frees
        slots = max(1, int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1)))
    with beat:
        yield from _submit(ray, groups, settings, plugins, max_retries, mine, picks, baseline_remote,
                           job_remote, gate, slots, memos or {})


def _result(ray, ref, job: Job, max_retries: int) -> dict[str, Any]:
    """A finished task's record, or a failed record when its worker or node was lost for good."""
    try:
        return ray.get(ref)
    except Exception as e:  # noqa: BLE001 - worker or node lost after all retries
        return {**failed_record(job, f"ray task failed after {max_retries} retries: {type(e).__name__}: "
                                     f"{str(e).splitlines()[0] if str(e) else ''}"), "backend": "ray"}


def _submit(ray, groups, settings, plugins, max_retries, mine, picks, baseline_remote, job_remote,
            gate, slots: int, memos: dict[str, dict[str, dict]]) -> Iterator[Outcome]:
    """Submit jobs one slot at a time, each only if ``gate`` admits it when a slot frees; a
    job with an allocation identical to a submitted one waits for its result (free)."""
    queue = [job for group in groups for job in group]
    base_refs: dict[str, Any] = {}
    pending: dict[Any, tuple[Job, Any]] = {}
    followers: dict[str, list[Job]] = {}
    leader: dict[tuple, Job] = {}
    untrained: dict = {}

    def pick_of(job: Job):
        return pick_for(job, picks)

    def submit(job: Job) -> None:
        bkey = job.baseline_key
        if bkey not in base_refs:
            base_refs[bkey] = baseline_remote.remote(job, settings, plugins)
        ref = job_remote.remote(job, base_refs[bkey], settings, plugins, pick_of(job))
        pending[ref] = (job, base_refs[bkey])

    i = 0
    while i < len(queue) or pending:
        while i < len(queue) and len(pending) < slots:
            job = queue[i]
            i += 1
            mkey = planned_memo_key(job, untrained, pick_of(job))
            lkey = (job.baseline_key, mkey)
            if mkey is not None and mkey in memos.get(job.baseline_key, {}):  # recorded before this run
                yield reused_record(job, memos[job.baseline_key][mkey]) if mine(job) else Marker(job.key, CLAIMED)
                continue
            if mkey is not None and lkey in leader:  # claimed now, recorded from its leader's result
                if mine(job):
                    followers[leader[lkey].key].append(job)
                else:
                    yield Marker(job.key, CLAIMED)
                continue
            if not gate(job):
                yield Marker(job.key, LEFT)
                continue
            if not mine(job):
                yield Marker(job.key, CLAIMED)
                continue
            if mkey is not None:
                leader[lkey], followers[job.key] = job, []
            submit(job)
        if not pending:
            continue
        done, _ = ray.wait(list(pending), num_returns=1)
        job, _ = pending.pop(done[0])
        rec = _result(ray, done[0], job, max_retries)
        yield rec
        for follower in followers.pop(job.key, []):
            if rec["status"] == "ok":
                yield reused_record(follower, rec)
            elif not gate(follower):
                yield Marker(follower.key, LEFT)
            elif not mine(follower):
                yield Marker(follower.key, CLAIMED)
            else:
                submit(follower)
