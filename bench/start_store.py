"""Compressed starts kept on disk, for methods whose compression takes minutes.

ADTN's pre-fit on VGG-16's two hidden linears takes 9 to 11 minutes on one CPU thread, and the
same start is compressed again and again: by the 5-, 10- and 20-epoch jobs of one seed in a
convergence suite, and by a tuning job resumed in a later session (``bench.trial_journal``). A
method that builds its modules without fitting them (``Compressor.skeleton``) has the weights of
its compressed layers, their ``tnbench_info``, the per-layer info and the compression's seconds
kept under ``<checkpoints root>/checkpoints/starts/<key>.pt``; a job that would compress the same
way builds the skeletons and loads them instead. Tensors, strings and numbers only: the file is
read with ``weights_only=True`` like every checkpoint, so a planted file cannot run code.

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
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.allocation import without_allocation
from bench.atomic_file import atomic_write
from bench.layers import get_layer, replace_layer
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
                           "options": without_allocation(job.options),
                           "layers": job.layers, "knobs": knobs, "seed": job.seed,
                           "device": torch.device(device).type, "threads": torch.get_num_threads(),
                           "source": source_hash(method)})

    def load(self, key: str, model: nn.Module, method, knobs: dict[str, Any]) -> tuple[dict, float] | None:
        """Put the kept start's layers into ``model`` (built by ``method.skeleton``, their weights
        and ``tnbench_info`` loaded) and restore the random state after its compression; returns
        (per-layer info, the compression's seconds), or None when there is no start. A file that
        does not load into the skeletons is removed with a warning (compressed again); ``model``
        is left as it was then."""
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            start = torch.load(path, map_location="cpu", weights_only=True)
            layers = {}
            for name, knob in knobs.items():
                new = method.skeleton(get_layer(model, name), knob)
                new.load_state_dict(start["state"][name], strict=True)
                new.tnbench_info = json.loads(start["layer_info"])[name]
                layers[name] = new
            info, seconds = json.loads(start["info"]), float(start["seconds"])
            rng = start["rng"]
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: compress again
            warnings.warn(f"compressed start {path} does not load ({type(e).__name__}: {e}); compressing again",
                          stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        for name, layer in layers.items():
            replace_layer(model, name, layer)
        torch.set_rng_state(rng)  # after the skeletons, which may draw random numbers
        return info, seconds

    def keep(self, key: str, model: nn.Module, layer_names: list[str], info: dict, seconds: float,
             label: str = "") -> None:
        """Write the compressed layers of ``model`` and the random state now (atomically: a killed
        writer leaves no half file under the key). A start that cannot be written (info that is
        not JSON, a full disk) is only not kept: the job goes on, with a warning."""
        try:
            layers = {n: get_layer(model, n) for n in layer_names}
            payload = {"state": {n: {k: v.detach().cpu() for k, v in m.state_dict().items()} for n, m in layers.items()},
                       "layer_info": json.dumps({n: getattr(m, "tnbench_info", {}) for n, m in layers.items()}),
                       "info": json.dumps(info), "seconds": float(seconds), "rng": torch.get_rng_state()}
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / f"{key}.pt", lambda f: torch.save(payload, f))
        except Exception as e:  # noqa: BLE001 - a cache: losing it costs time, not results
            warnings.warn(f"{label}: compressed start not kept ({type(e).__name__}: {e})", stacklevel=2)
