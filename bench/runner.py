"""The driver of a sweep: decides which jobs still need running, hands them to a backend
(bench/backends), and alone writes their records, stamped with the code version and the
environment once, here. A key's latest record is the one reports use.

Guarantees: every job of the list ends the run recorded (ok, skipped or failed), already done,
or left to another sweep that holds its claim; the counts printed add up to the job list.
"""
from __future__ import annotations

import platform
import subprocess
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from bench.backends.local import CLAIMED, run_groups, run_parallel
from bench.claims import Claims
from bench.job import failed_record
from bench.records import append_record, config_key, done_keys, latest_by_key, read_records
from bench.suite import Job
from bench.train import resolve_device

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunSettings:
    out: Path
    data_dir: Path | None
    download: bool = True
    progress: bool = True
    #: root of the dense-baseline cache (``<root>/checkpoints``); default: ``out``
    checkpoints: Path | None = None

    @property
    def baseline_root(self) -> Path:
        return Path(self.checkpoints if self.checkpoints is not None else self.out)

    def quiet(self, **changes: Any) -> "RunSettings":
        """The settings a worker process or Ray task gets: no progress bars."""
        return replace(self, progress=False, **changes)


def code_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Versions on the driver; each record adds where it ran (``device``, ``threads``)."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "host_cpu": platform.machine()}
    try:
        import tensorly
        env["tensorly"] = tensorly.__version__
    except ImportError:
        pass
    return env


def records_path(out: Path, suite_name: str, fit_only: bool) -> Path:
    return Path(out) / suite_name / ("fit_runs.jsonl" if fit_only else "runs.jsonl")


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by dense baseline, so each baseline is trained (or loaded) once."""
    by_base: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_base[config_key(j.baseline_config)].append(j)
    return list(by_base.values())


class JobClaimer:
    """Claims a job for this sweep just before it runs (picklable, so workers use it too): False
    when another sweep holds it or has recorded it since this sweep started."""

    def __init__(self, claims, path: Path, rerun: bool):
        self.claims, self.path, self.rerun = claims, Path(path), rerun

    def __call__(self, job: Job) -> bool:
        if not self.claims.try_claim(job.key):
            return False
        if not self.rerun and job.key in done_keys(self.path):  # finished by another sweep meanwhile
            self.claims.release(job.key)
            return False
        return True

    def claimer(self) -> "JobClaimer":
        return self

    def holding(self, job: Job):
        """Context that heartbeats ``job``'s claim while it runs (long jobs stay claimed)."""
        return self.claims.keep_alive([job.key])


def tuning_passes(todo: list[Job], jobs: list[Job]) -> list[list[Job]]:
    """[jobs that pick their fine-tuning lr, jobs that reuse a pick]: of the jobs sharing a tune
    key (same config but the seed), the one of the lowest seed in the job list tunes."""
    tuned = [j for j in todo if getattr(j, "lr_grid", None)]
    if not tuned:
        return [todo]
    tuner = {}
    for j in sorted(jobs, key=lambda j: j.seed):
        if getattr(j, "lr_grid", None):
            tuner.setdefault(j.tune_key, j.key)
    first = [j for j in todo if not getattr(j, "lr_grid", None) or tuner[j.tune_key] == j.key]
    second = [j for j in todo if j not in first]
    return [p for p in (first, second) if p]


def lr_picks(path: Path) -> dict[str, float]:
    """Tune key -> learning rate picked, from the records of tuning jobs."""
    picks = {}
    for r in latest_by_key(read_records(path)).values():
        t = r.get("lr_tuning")
        if r.get("status") == "ok" and t and t.get("tuned_here") and r.get("tune_key"):
            picks[r["tune_key"]] = t["pick"]
    return picks


def _stream(groups, settings: RunSettings, devices: list[str], backend: str, address, plugins,
            claimer, picks) -> Iterator[dict]:
    if backend == "ray":
        from bench.backends.ray import run_ray

        return run_ray(groups, settings, address, plugins, claim=claimer, lr_picks=picks)
    if len(devices) == 1:
        return run_groups(groups, settings, resolve_device(devices[0]), claimer, picks)
    return run_parallel(groups, settings, devices, claimer, picks, plugins)


def run_jobs(jobs: list[Job], settings: RunSettings, devices: list[str], path: Path,
             backend: str = "local", address: str | None = None, plugins: list[str] | None = None,
             rerun: bool = False, claims=None) -> dict[str, int]:
    """Run the jobs that have no ok/skipped record yet (all of them with ``rerun``); append each
    record as it finishes. Each job is claimed (bench.claims) just before it runs, so concurrent
    sweeps on one output, or machines sharing its filesystem, split the work; ``claims``
    overrides where the claims live (default: ``<records>.claims/`` beside the records).

    ``backend``: "local" (this process, or one worker per device) or "ray" (bench/backends/ray.py)."""
    done = set() if rerun else done_keys(path)
    todo = [j for j in jobs if j.key not in done]
    counts = {"total": len(jobs), "already_done": len(jobs) - len(todo), "ok": 0, "failed": 0, "skipped": 0,
              CLAIMED: 0}
    if not todo:
        return counts
    version, env = code_version(), environment()
    if claims is None:
        claims = Claims(path.parent / f"{path.stem}.claims")
    claimer = JobClaimer(claims, path, rerun)
    bar = tqdm(total=len(todo), desc="jobs", unit="job", disable=not settings.progress)
    by_key = {j.key: j for j in todo}
    try:
        for part in tuning_passes(todo, jobs):
            seen: set[str] = set()
            for rec in _stream(_groups(part), settings, devices, backend, address, plugins, claimer,
                               lr_picks(path)):
                seen.add(rec["key"])
                _finish(rec, by_key, path, version, env, counts, claims, bar)
            for job in part:  # a backend that lost a job must not make the counts lie
                if job.key not in seen:
                    _finish(failed_record(job, "no result came back from the backend"), by_key, path, version,
                            env, counts, claims, bar)
    finally:
        claims.release_all_mine()
        bar.close()
    finished = counts["already_done"] + counts["ok"] + counts["failed"] + counts["skipped"] + counts[CLAIMED]
    assert finished == counts["total"], f"job accounting is off: {counts}"
    return counts


def _finish(rec: dict, by_key: dict[str, Job], path: Path, version: str, env: dict, counts: dict, claims,
            bar) -> None:
    """Count one result; record it (stamped) unless another sweep holds the job."""
    if rec["status"] != CLAIMED:
        job = by_key.get(rec["key"])
        if job is not None and hasattr(job, "tune_key"):
            rec["tune_key"] = job.tune_key
        rec.update(code_version=version, env={**env, **(rec.get("env") or {})})
        append_record(path, rec)
        if claims is not None:
            claims.release(rec["key"])
        if rec["status"] == "failed":
            tqdm.write(f"FAILED {rec['network']}/{rec['dataset']} {rec['label']} {rec['budget']} "
                       f"seed {rec['seed']}: {rec['error']}")
    counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    finished = counts["ok"] + counts["failed"] + counts["skipped"] + counts[CLAIMED]
    bar.set_postfix(ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"],
                    left=bar.total - finished)
    bar.update()
