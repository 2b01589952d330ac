"""Dense baselines: trained once per (network, dataset, seed, recipe, data config), cached as
checkpoints under ``<out>/checkpoints`` and shared by every suite writing to that root.

A checkpoint is a pair: ``<name>.pt`` (the state dict) and ``<name>.json`` (the summary). The
pair stays two files so the summary remains readable without torch; it is tied to the weights
by the sha256 of the ``.pt`` bytes it holds. Both files are written by tmp + fsync + os.replace,
weights first and the summary last, so a crash leaves at worst weights without a summary, or an
old summary whose hash does not match: never a pair that verifies but is wrong. A pair that does
not verify is reported, deleted and retrained — never trusted, never fatal.

One trainer per baseline: training takes a claim (``bench.claims``) in ``training.claims/`` beside
the checkpoints, so two sweeps sharing a checkpoint root (two workers on one output, or two
suites) never train the same baseline side by side. The other one waits for the checkpoint, or, asked not to wait
(the local backend), raises ``BaselineInTraining`` and runs other jobs meanwhile.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.claims import Claims
from bench.data import DataSplits
from bench.environment import environment
from bench.models import build_network
from bench.atomic_file import atomic_write
from bench.records import config_key
from bench.train import evaluate, prepare_model, train


class BadCheckpoint(Exception):
    """A checkpoint pair that must not be used; the message says why."""


class BaselineInTraining(Exception):
    """Another live process holds the training claim of this baseline (``get_baseline``)."""


#: seconds between looks at a baseline another process is training (``get_baseline(wait=True)``)
WAIT_POLL_S = 30.0


def training_claims(checkpoint: Path) -> Claims:
    """The claims, beside the checkpoints, that give one process at a time the right to train
    a baseline."""
    return Claims(Path(checkpoint).parent / "training.claims")


def has_checkpoint(pt: Path) -> bool:
    """Whether a checkpoint's weights and its summary are both there (not whether they are sound:
    ``load_checkpoint`` checks that)."""
    return pt.is_file() and pt.with_suffix(".json").is_file()


def checkpoint_path(root: Path, config: dict[str, Any]) -> Path:
    return Path(root) / "checkpoints" / f"{config['network']}_{config['dataset']}_s{config['seed']}_{config_key(config)}.pt"


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """16 hex chars of a sha256 over the tensors (name, dtype, shape, row-major bytes) in sorted
    key order: equal fingerprints mean equal weights, whatever the device or memory format."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):  # a module's extra state
            h.update(f"{name}|{t!r}|".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_meta(meta_path: Path, meta: dict) -> None:
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _read_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise BadCheckpoint(f"unreadable summary ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("acc_test"), (int, float)):
        raise BadCheckpoint("summary is not a baseline summary")
    return meta


def _load_weights(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The verified state dict of ``path``; ``meta`` lacking a hash (a checkpoint from before
    hashes) is trusted as far as ``torch.load`` and ``load_state_dict`` go."""
    if not path.exists():
        raise BadCheckpoint("weights file missing")
    if path.stat().st_size == 0:
        raise BadCheckpoint("weights file empty")
    if "weights_sha256" in meta and file_sha256(path) != meta["weights_sha256"]:
        raise BadCheckpoint("weights sha256 does not match the summary (truncated or corrupted)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: retrain
        raise BadCheckpoint(f"torch.load failed ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise BadCheckpoint("weights file holds no state dict")
    bad = [k for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # a matching sha only says the file is the one written: NaN weights are no baseline
        raise BadCheckpoint(f"non-finite weights in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    return state


def cached_fingerprint(root: Path, config: dict[str, Any]) -> str | None:
    """The weights fingerprint the summary of ``config``'s cached checkpoint states (no weights
    loaded); None when there is no readable summary or it predates fingerprints."""
    return summary_fingerprint(checkpoint_path(root, config).with_suffix(".json"))


def summary_fingerprint(meta_path: Path) -> str | None:
    """The weights fingerprint a checkpoint summary file states; None when it is missing,
    unreadable or predates fingerprints."""
    try:
        fp = _read_meta(Path(meta_path)).get("weights_fingerprint")
    except BadCheckpoint:
        return None
    return fp if isinstance(fp, str) else None


def load_checkpoint(path: Path, model: nn.Module) -> dict | None:
    """Load a verified checkpoint into ``model`` and return its summary (with a
    ``weights_fingerprint``); None when there is none. Raises BadCheckpoint."""
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        if path.exists():
            raise BadCheckpoint("weights without a summary (interrupted write?)")
        return None
    meta = _read_meta(meta_path)
    state = _load_weights(path, meta)
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - missing/unexpected keys, shapes, non-tensors
        raise BadCheckpoint(f"weights do not fit the network ({e})") from e
    if "weights_sha256" not in meta or "weights_fingerprint" not in meta:
        meta = {**meta, "weights_sha256": file_sha256(path), "weights_fingerprint": weights_fingerprint(state)}
        try:
            _write_meta(meta_path, meta)  # upgrade an old checkpoint: verified from now on
        except OSError:
            pass  # a read-only cache still serves; it is just checked less next time
    return meta


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict) -> dict:
    """Write weights, then the summary holding their hash; return the summary as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))
    meta = {**meta, "weights_sha256": file_sha256(path), "weights_fingerprint": weights_fingerprint(state)}
    _write_meta(path.with_suffix(".json"), meta)
    return meta


def _discard(path: Path, reason: str) -> None:
    warnings.warn(f"dense baseline checkpoint {path}: {reason}; deleting it and retraining", stacklevel=3)
    for p in (path.with_suffix(".json"), path):  # summary first: never leave it without weights
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass  # retraining replaces it anyway


def get_baseline(root: Path, config: dict[str, Any], data: DataSplits, progress: bool = True,
                 wait: bool = True) -> tuple[nn.Module, dict]:
    """The trained dense model and its summary (test/val accuracy, training time, weights
    fingerprint). A damaged checkpoint is retrained with a warning. While another process
    trains this baseline: wait for its checkpoint (``wait``), else raise ``BaselineInTraining``.
    Only the claim's holder discards a pair that does not verify: to anyone else it may be a
    checkpoint half-way through being saved."""
    path = checkpoint_path(root, config)
    model = build_network(config["network"], data.input_shape, data.num_classes)
    claims = training_claims(path)
    while (meta := _load(path, model, discard=False)) is None and not claims.try_claim(path.stem):
        if not wait:
            holder = claims.holder(path.stem) or {}
            raise BaselineInTraining(f"{path.name} is being trained by pid {holder.get('pid')} on "
                                     f"{holder.get('host')}")
        time.sleep(WAIT_POLL_S)
    if meta is None:  # the claim is ours
        try:
            meta = _load(path, model, discard=True)  # saved by the previous holder since our look?
            if meta is None:
                with claims.keep_alive([path.stem]):
                    return _train_baseline(path, config, data, progress)
        finally:
            claims.release(path.stem)
    prepare_model(model, data.x_train.device)
    return model, meta


def in_training(root: Path, config: dict[str, Any]) -> bool:
    """Whether another live process is training this baseline (no checkpoint yet): cheap, for a
    sweep that handed the baseline's jobs to that process and looks whether to take them back."""
    path = checkpoint_path(root, config)
    return not has_checkpoint(path) and training_claims(path).is_live(path.stem)


def _load(path: Path, model: nn.Module, discard: bool) -> dict | None:
    """``load_checkpoint``; None for a missing pair or one that does not verify, which is
    deleted with a warning when ``discard`` (the training claim's holder) and kept otherwise."""
    try:
        return load_checkpoint(path, model)
    except BadCheckpoint as e:
        if discard:
            _discard(path, str(e))
        return None


def _train_baseline(path: Path, config: dict[str, Any], data: DataSplits, progress: bool) -> tuple[nn.Module, dict]:
    torch.manual_seed(config["seed"])
    model = build_network(config["network"], data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    kept_state = training_state_path(path)
    summary = train(model, data, config["train"], seed=config["seed"],
                    desc=f"dense {config['network']}/{config['dataset']} s{config['seed']}", progress=progress,
                    state_path=kept_state)
    meta = {"config": config, "acc_test": evaluate(model, data.x_test, data.y_test),
            "acc_val": summary["val_acc"], "time_train_s": time.perf_counter() - t0 + summary["resumed_s"],
            "precision": summary["precision"], "threads": torch.get_num_threads(),
            "data_fingerprint": data.fingerprint,
            # where it trained: weights differ across kinds of CPU and thread counts (docs/DESIGN.md, Baselines)
            "env": environment()}
    if summary["resumed_epochs"]:
        meta["resumed_epochs"] = summary["resumed_epochs"]  # went on from a killed run's kept state
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = save_checkpoint(path, state, meta)
    kept_state.unlink(missing_ok=True)
    return model, meta


def training_state_path(checkpoint: Path) -> Path:
    """Where a baseline in training keeps its state after each epoch (``bench.train_state``):
    beside its checkpoint, not a ``.pt`` (nothing that lists checkpoints takes it for one)."""
    return checkpoint.with_suffix(".training-state")
