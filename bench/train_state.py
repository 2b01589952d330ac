"""A training run's state at the end of its last finished epoch, kept in one file so that a
killed run goes on from there instead of from scratch.

Why: a dense VGG-16 baseline trains for 50-90 minutes on a 2-core CPU, and the sessions that
run sweeps here end when they end; before this, a baseline cut short at epoch 14 of 15 was
trained again from epoch 0. The state is everything the next epoch reads: the weights, the
optimizer's and the schedule's state, the permutation / augmentation generator and the global
RNG (dropout), the best validation epoch so far and the seconds already spent. Restored, the run
continues with the same numbers it would have had uninterrupted (on the same machine and
thread count, as any rerun).

A state is only taken up by the run it belongs to (``identity``: recipe, seed, epochs, data
fingerprint, sizes); any other, or an unreadable file, is ignored with a warning and
overwritten. ``bench.baseline`` keeps it beside the checkpoint and deletes it once the
checkpoint is written; ``bench.job`` keeps a fine-tuning run's in its trial journal's folder
(``bench.trial_journal``), with the start weights' fingerprint in the identity.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from bench.atomic_file import atomic_write

#: keep the state after an epoch only when this many seconds have passed since it was last kept:
#: VGG-16's 400 MB state costs a second or two, nothing beside a CPU epoch of minutes, but a GPU
#: epoch takes seconds (and an MNIST baseline is cheap to redo)
EVERY_S = 60.0


def identity(recipe: dict[str, Any], seed: int, epochs: float, data_fingerprint: str | None,
             n_train: int, n_val: int, start: str | None = None) -> str:
    """What a state must match to be resumed: JSON of the run's defining values. ``start``: the
    fingerprint of the weights the run began from, for runs whose start is not fixed by the
    rest (a fine-tuning run starts from a compression; a baseline from its seed)."""
    values = {"recipe": recipe, "seed": seed, "epochs": epochs, "data": data_fingerprint,
              "n_train": n_train, "n_val": n_val}
    if start is not None:
        values["start"] = start
    return json.dumps(values, sort_keys=True, default=str)


def save(path: Path, ident: str, epoch: int, model, opt, sched, gen: torch.Generator,
         best_acc: float, best_state: dict | None, elapsed_s: float) -> None:
    """Write the state after ``epoch`` (0-based, finished) atomically."""
    state = {"identity": ident, "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "generator": gen.get_state(), "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             "best_acc": best_acc, "best_state": best_state, "elapsed_s": elapsed_s}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda f: torch.save(state, f))


def load(path: Path, ident: str, model) -> dict[str, Any] | None:
    """The state kept at ``path`` when it belongs to this run and fits ``model``, else None (a
    foreign, damaged or misfitting state is ignored with a warning: the run starts from scratch
    and overwrites it)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(state, dict) and state.get("identity") == ident
        fits = ok and _fits(state.get("model"), model.state_dict()) and _fits(state.get("best_state"), model.state_dict(),
                                                                           optional=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: start from scratch
        warnings.warn(f"training state {path} is unreadable ({type(e).__name__}: {e}); starting from epoch 1",
                      stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"training state {path} belongs to another run (recipe, seed, epochs or data differ); "
                      "starting from epoch 1", stacklevel=3)
        return None
    if not fits:  # the network's code changed under the same name and recipe
        warnings.warn(f"training state {path} does not fit the network (other layers or shapes); "
                      "starting from epoch 1", stacklevel=3)
        return None
    return state


def _fits(saved, current: dict, optional: bool = False) -> bool:
    if saved is None:
        return optional
    return (isinstance(saved, dict) and saved.keys() == current.keys()
            and all(torch.is_tensor(saved[k]) and saved[k].shape == current[k].shape for k in current))


def restore(state: dict[str, Any], model, opt, sched, gen: torch.Generator) -> None:
    """Put a loaded state back into the run's objects (the caller reads epoch, best and time)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
