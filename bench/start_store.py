"""Compressed starts kept on disk, for methods whose compression takes minutes.

ADTN's pre-fit on VGG-16's two hidden linears takes 9 to 11 minutes on one CPU thread, and the
same start is compressed again and again: by the 5-, 10- and 20-epoch jobs of one seed in a
convergence suite, and by a tuning job resumed in a later session (``bench.trial_journal``). A
method that says ``Compressor.caches_start`` has its compressed layers, the per-layer info and
the compression's seconds kept under ``<checkpoints root>/checkpoints/starts/<key>.pt``; a job
that would compress the same way loads them instead.

The key holds everything the start depends on: the baseline's weights fingerprint, the method
and its options (not the ``allocation`` split, which acts only through the knobs), the layers,
the knobs, the seed, the device type, the thread count (CPU kernels round differently on
another count) and a hash of the method's source files (its package's ``.py`` files), so an
edited pre-fit never loads an old start. The torch random state after compression is kept too
and restored, so what follows runs exactly as after a fresh compression. The record keeps the
measured ``time_compress_s`` (a cost of the method) and says ``start_from_cache``.
"""
from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.baseline import atomic_write
from bench.records import config_key


def source_hash(method) -> str:
    """sha256 over the source files of the package that defines ``method``'s class (the module
    file alone for a plugin loaded from a path)."""
    module = sys.modules.get(type(method).__module__)
    path = Path(getattr(module, "__file__", "") or "")
    files = sorted(path.parent.glob("*.py")) if getattr(module, "__package__", None) else [path]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


class StartStore:
    """Compressed starts under ``root``/checkpoints/starts (``root``: the sweep's checkpoint root)."""

    def __init__(self, root: Path):
        self.folder = Path(root) / "checkpoints" / "starts"

    def key(self, job, method, knobs: dict[str, Any], baseline_fingerprint: str | None, device) -> str | None:
        """The start's key; None when there is no baseline fingerprint to tie it to."""
        if not baseline_fingerprint:
            return None
        return config_key({"baseline": baseline_fingerprint, "method": job.method,
                           "options": {k: v for k, v in job.options.items() if k != "allocation"},
                           "layers": job.layers, "knobs": knobs, "seed": job.seed,
                           "device": torch.device(device).type, "threads": torch.get_num_threads(),
                           "source": source_hash(method)})

    def fetch(self, key: str, device) -> dict[str, Any] | None:
        """The kept start (``layers``, ``info``, ``seconds``), its random state restored; None
        when there is none. An unreadable file is removed with a warning: it is compressed again."""
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            start = torch.load(path, map_location=device, weights_only=False)
            layers, info, seconds = start["layers"], start["info"], float(start["seconds"])
            if not all(isinstance(m, nn.Module) for m in layers.values()):
                raise ValueError("not a dict of modules")
            torch.set_rng_state(start["rng"])
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: compress again
            warnings.warn(f"compressed start {path} is unreadable ({type(e).__name__}: {e}); compressing again",
                          stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return {"layers": layers, "info": info, "seconds": seconds}

    def keep(self, key: str, layers: dict[str, nn.Module], info: dict, seconds: float, rng: torch.Tensor,
             label: str = "") -> None:
        """Write a start (atomically: a killed writer leaves no half file under the key). A start
        that cannot be written (a module that does not pickle, a full disk) is only not kept:
        the job goes on, with a warning."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / f"{key}.pt", lambda f: torch.save(
                {"layers": layers, "info": info, "seconds": seconds, "rng": rng}, f))
        except Exception as e:  # noqa: BLE001 - a cache: losing it costs time, not results
            warnings.warn(f"{label}: compressed start not kept ({type(e).__name__}: {e})", stacklevel=2)
