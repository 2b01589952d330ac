"""Dense baselines kept beside a suite's records (``<out>/<suite>/baselines/``).

Training is deterministic on one machine, not across machines: a suite run over several
sessions on different CPUs would retrain each seed's baseline to other weights, and every record
made on the old ones would then be stale (``bench.stale``) or, in the tables, on another
baseline (``report_frames.baseline_split``). Small baselines (FC-2, LeNet-5: under 1 MB each)
can be committed with the records instead: ``--keep-baselines`` copies a sweep's baselines
there, and every sweep copies what is there into its checkpoint cache where the cache has no
file of that name. A copied checkpoint is checked like any other (its weights' sha256).
"""
from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from bench.baseline import checkpoint_path, has_checkpoint

FOLDER = "baselines"


def kept_folder(out: Path, suite_name: str) -> Path:
    return Path(out) / suite_name / FOLDER


def seeding_suites(suite_name: str, reuse) -> tuple[str, ...]:
    """The suites whose kept baselines a sweep of ``suite_name`` seeds its cache from: its own and
    those it reuses records of (``protocol.reuse``: the records it copies are on their baselines)."""
    return (suite_name, *reuse)


def seed_cache(out: Path, suite_name: str, baseline_root: Path) -> int:
    """Copy the suite's kept baselines into ``<baseline_root>/checkpoints/`` where no file of that
    name is there yet. Returns how many checkpoints were copied."""
    kept = kept_folder(out, suite_name)
    if not kept.is_dir():
        return 0
    cache = Path(baseline_root) / "checkpoints"
    copied = 0
    for pt in sorted(kept.glob("*.pt")):
        meta = pt.with_suffix(".json")
        if not meta.exists() or (cache / pt.name).exists():
            continue
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy2(meta, cache / meta.name)
        shutil.copy2(pt, cache / pt.name)
        copied += 1
    return copied


def is_kept(out: Path, suite_names, baseline_config: dict) -> bool:
    """Whether a kept folder of one of ``suite_names`` holds this baseline (a sweep would copy it
    into its cache before running: the dry run costs it nothing)."""
    name = checkpoint_path(Path(out), baseline_config).name
    pts = (kept_folder(out, n) / name for n in suite_names)
    return any(has_checkpoint(pt) for pt in pts)


def keep(out: Path, suite_name: str, baseline_root: Path, baseline_configs: list[dict]) -> int:
    """Copy the cached checkpoints of ``baseline_configs`` (those that exist) into the suite's
    kept folder. Returns how many are kept there now."""
    kept = kept_folder(out, suite_name)
    n = 0
    for cfg in baseline_configs:
        pt = checkpoint_path(baseline_root, cfg)
        if not pt.exists() or not pt.with_suffix(".json").exists():
            continue
        kept.mkdir(parents=True, exist_ok=True)
        for src in (pt.with_suffix(".json"), pt):
            if not (kept / src.name).exists() or not filecmp.cmp(src, kept / src.name, shallow=False):
                shutil.copy2(src, kept / src.name)
        n += 1
    return n
