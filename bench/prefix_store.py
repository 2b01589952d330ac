"""Frozen-prefix caches (``bench.prefix``) kept in memory for a baseline's group of jobs and on
disk beside the baseline's checkpoint, so a later run of the same baseline loads them.

Why: building one is a prefix pass over every training view. On VGG-16 / CIFAR-10 that is
4 x 45,000 images through the convolutional features, 6-12 minutes on 2 CPU cores, and every
run paid it again: a resume, a second ``--methods`` run on the same ``--out``, a later
session that kept the checkpoint. The activations are a function of the baseline's weights,
the layer cut before, the views and the seed that draws them, the precision they ran in, the
device kind and the data; a file is used only when all of these are the ones asked for.

A file is ``<checkpoint stem>.prefix-<16 hex>.pt`` (the hex: a hash of that identity), written
by tmp + fsync + rename like the checkpoint, loaded with ``weights_only`` and checked (identity,
tensor fingerprint, shapes, finite values) before use; one that fails is warned about, deleted
and rebuilt. It is an optimisation only: a failed write (a full disk) warns and the run goes on
with the cache in memory. Delete the files to reclaim the space; they are rebuilt on demand.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from bench import precision as prec
from bench.atomic_file import atomic_write
from bench.baseline import checkpoint_path, weights_fingerprint
from bench.data import DataSplits
from bench.prefix import PrefixCache, cached_splits
from bench.records import OutputWriteError

#: the tensors of a cache file: training views (or the one plain view), validation, test inputs
_TENSORS = ("x_train_views", "x_val", "x_test")


def identity(base_meta: dict[str, Any], layer: str, views: int, seed: int, precision: str | None,
             data: DataSplits) -> dict[str, Any]:
    """What a cache's activations are a function of (strings and ints only)."""
    device = data.x_train.device
    return {"baseline_sha256": str(base_meta.get("weights_sha256") or base_meta.get("weights_fingerprint")),
            "layer": layer, "views": int(views), "seed": int(seed),
            "precision": prec.resolve(precision, device), "device": device.type,
            "data_fingerprint": str(data.fingerprint), "n": [len(data.y_train), len(data.y_val), len(data.y_test)]}


def identity_key(ident: dict[str, Any]) -> str:
    return json.dumps(ident, sort_keys=True)


def cache_file(root: Path, baseline_config: dict[str, Any], ident: dict[str, Any]) -> Path:
    ckpt = checkpoint_path(root, baseline_config)
    digest = hashlib.sha256(identity_key(ident).encode()).hexdigest()[:16]
    return ckpt.with_name(f"{ckpt.stem}.prefix-{digest}.pt")


class BadPrefixFile(Exception):
    """A cache file that must not be used; the message says why."""


def _tensors(cache: PrefixCache) -> dict[str, torch.Tensor]:
    s = cache.splits
    views = s.x_train_views if s.x_train_views is not None else s.x_train.unsqueeze(0)
    return {"x_train_views": views.cpu(), "x_val": s.x_val.cpu(), "x_test": s.x_test.cpu()}


def save(path: Path, cache: PrefixCache, ident: dict[str, Any]) -> None:
    tensors = _tensors(cache)
    payload = {**tensors, "identity": ident, "fingerprint": weights_fingerprint(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: Path, ident: dict[str, Any], data: DataSplits) -> PrefixCache:
    """The cache in ``path`` as ``bench.prefix.build_cache`` would return it for ``data``;
    raises ``BadPrefixFile``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: rebuild
        raise BadPrefixFile(f"torch.load failed ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("identity") != ident:
        raise BadPrefixFile("made for another baseline, cut, view count, seed, precision or data")
    tensors = {k: payload.get(k) for k in _TENSORS}
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise BadPrefixFile("tensors missing")
    if weights_fingerprint(tensors) != payload.get("fingerprint"):
        raise BadPrefixFile("tensor fingerprint does not match (corrupted)")
    views, x_val, x_test = (tensors[k] for k in _TENSORS)
    if (views.shape[:2] != (ident["views"], len(data.y_train)) or len(x_val) != len(data.y_val)
            or len(x_test) != len(data.y_test)):
        raise BadPrefixFile("shapes do not fit the data splits")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise BadPrefixFile("non-finite activations")
    dev = data.x_train.device
    splits = cached_splits(data, views.to(dev), x_val.to(dev), x_test.to(dev))
    return PrefixCache(ident["layer"], ident["views"], splits, data.fingerprint)


class PrefixStore:
    """The frozen-prefix cache of one baseline group: in memory (one at a time: they can be
    large) and, with a ``root`` (the sweep's checkpoint root), in a file beside the checkpoint."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.held: dict[str, PrefixCache] = {}

    def get(self, job, base_meta: dict[str, Any], layer: str, data: DataSplits, views: int,
            precision: str | None, build: Callable[[], PrefixCache]) -> tuple[PrefixCache, float, str]:
        """(cache, seconds spent getting it, where from: ``memory``, ``file`` or ``built``)."""
        ident = identity(base_meta, layer, views, job.seed, precision, data)
        key = identity_key(ident)
        if key in self.held:
            return self.held[key], 0.0, "memory"
        t0 = time.perf_counter()
        path = cache_file(self.root, job.baseline_config, ident) if self.root is not None else None
        cache, source = None, "built"
        if path is not None and path.is_file():
            try:
                cache, source = load(path, ident, data), "file"
            except BadPrefixFile as e:
                warnings.warn(f"frozen-prefix cache {path}: {e}; deleting it and rebuilding", stacklevel=2)
                path.unlink(missing_ok=True)
        if cache is None:
            cache = build()
            if path is not None:
                try:
                    save(path, cache, ident)
                except OutputWriteError as e:
                    warnings.warn(f"{e}; the frozen-prefix cache stays in memory for this run only", stacklevel=2)
        self.held.clear()
        self.held[key] = cache
        return cache, time.perf_counter() - t0, source
