"""Records whose key still matches their job but which no longer measure it, so a sweep runs
the job again (the old record stays in the file as history; reports already read only the
latest record of a key and one baseline per seed, ``bench.report_frames.baseline_split``):

- **made on another dense baseline** than the checkpoint now in the cache. A baseline's key is
  its recipe; its weights are only reproducible on one machine and thread count, so a
  checkpoint retrained elsewhere keeps the key and changes the weights. Such a record measures
  a network nobody has any more.
- **made with a pick its tuning job no longer makes** (a job that reuses seed 0's pick,
  ``Job.reuses_pick``): the tuning job's record was re-made (on a new baseline, or by
  ``--rerun``) and ranks another pick first, or it is itself stale and will be re-made.

When no checkpoint is cached for a baseline (records copied without their checkpoints) nothing
can be compared and the records count as they are, until a sweep trains that baseline: it checks
again then and runs the stale ones in the same command (``bench.runner.Sweep.run``).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.baseline import cached_fingerprint, checkpoint_path, summary_fingerprint
from bench.plan import tuning_job
from bench.tuning import pick_changed


class CachedBaselines:
    """The weights fingerprint of each baseline's checkpoint under ``root`` (read from its
    summary, no weights loaded), else in one of the ``kept`` folders a sweep copies into the
    cache before it runs (``bench.kept_baselines.seed_cache``; the dry run, which copies
    nothing, passes them). A found fingerprint is kept for the sweep; a missing one is looked
    up again, since the sweep may train that baseline."""

    def __init__(self, root: Path, kept: Iterable[Path] = ()):
        self.root = Path(root)
        self.kept = [Path(k) for k in kept]
        self._found: dict[str, str] = {}

    def fingerprint(self, job) -> str | None:
        key = job.baseline_key
        if key not in self._found:
            fp = cached_fingerprint(self.root, job.baseline_config)
            if fp is None:
                name = checkpoint_path(self.root, job.baseline_config).with_suffix(".json").name
                fp = next(filter(None, (summary_fingerprint(k / name) for k in self.kept)), None)
            if fp is None:
                return None
            self._found[key] = fp
        return self._found[key]


def on_other_baseline(rec: dict[str, Any] | None, job, baselines: CachedBaselines) -> bool:
    """Whether ``rec`` (``job``'s record) is an ok measurement made on a baseline other than
    the cached checkpoint's."""
    if not rec or rec.get("status") != "ok" or not rec.get("baseline_fingerprint"):
        return False
    now = baselines.fingerprint(job)
    return now is not None and now != rec["baseline_fingerprint"]


def stale_keys(jobs: list, latest: dict[str, dict], baselines: CachedBaselines) -> set[str]:
    """Keys among ``jobs`` (and of the tuning jobs they take a pick from, in the run or not)
    whose latest record is stale in one of the two ways the module names."""
    stale = {j.key for j in jobs if on_other_baseline(latest.get(j.key), j, baselines)}
    tuners = {j.tune_key: tuning_job(j) for j in jobs if j.reuses_pick}
    stale |= {t.key for t in tuners.values() if on_other_baseline(latest.get(t.key), t, baselines)}
    for job in jobs:
        rec = latest.get(job.key)
        if job.key in stale or not job.reuses_pick or not rec or rec.get("status") != "ok":
            continue
        tuner = tuners[job.tune_key]
        if tuner.key in stale or pick_changed(rec, latest.get(tuner.key) or {}):
            stale.add(job.key)
    return stale


def at_risk(jobs: list, latest: dict[str, dict], baselines: CachedBaselines, todo: set[str]) -> list:
    """Jobs recorded ``ok`` on a baseline that is neither cached nor kept here, which this sweep
    trains because some of its jobs are in ``todo``: when the weights come out other than the
    records' (another kind of CPU, another thread count: docs/DESIGN.md, "Baselines"), the sweep
    runs these again. Said before anything runs, since the baseline alone may take an hour."""
    needed = {j.baseline_key: j for j in jobs if j.key in todo}  # one summary read per baseline, not per job
    trained_here = {k for k, j in needed.items() if baselines.fingerprint(j) is None}
    return [j for j in jobs if j.baseline_key in trained_here and j.key not in todo
            and (latest.get(j.key) or {}).get("status") == "ok" and latest[j.key].get("baseline_fingerprint")]


def at_risk_note(risky: list, latest: dict[str, dict], here: dict[str, Any], seconds: float | None = None) -> str:
    """One line for ``at_risk``'s jobs: how many, the processors their records name, this
    machine's (``here``: ``bench.environment.environment()``), and what re-running them costs."""
    made_on = sorted({processor(latest[j.key].get("env") or {}) for j in risky})
    cost = f" (estimated {seconds / 3600:,.1f} h more)" if seconds else ""
    return (f"note: {len(risky)} recorded jobs sit on dense baselines that are not in the checkpoint cache, which "
            f"this sweep trains (records made on {', '.join(made_on)}; this machine: {processor(here)}). If the "
            f"weights come out different, as they do on another kind of CPU or thread count, those jobs run "
            f"again{cost}; a fresh --out keeps them apart")


def processor(env: dict[str, Any]) -> str:
    """A record's (or this machine's) processor: model name, and family/model where it says them
    (two "AMD EPYC" kinds train the same seed to different weights)."""
    name = str(env.get("cpu_model") or "unknown CPU")
    return f"{name} ({env['cpu_id']})" if env.get("cpu_id") else name
