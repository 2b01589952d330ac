"""Training and evaluation on whole in-memory datasets.

Batches are sliced from a permutation drawn on the data's device and augmentation (if the dataset
names one) runs there in batch. The recipe's ``precision`` chooses bf16 autocast + channels_last
or fp32 (``bench.precision``; absent: bf16 on CUDA, fp32 on the CPU). The same code runs on
every device. Model selection: the epoch with the best validation accuracy is kept.
"""
from __future__ import annotations

import copy
import math
import numbers
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from bench import precision as prec
from bench import train_state
from bench.data import DataSplits
from bench.precision import PRECISIONS
from bench.prefix import pick_views

RECIPE_DEFAULTS: dict[str, Any] = {
    "epochs": 1, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
    "nesterov": False, "weight_decay": 5e-4, "schedule": "cosine", "label_smoothing": 0.0,
}
#: keys a recipe may set but that are absent unless set, so adding one never re-keys old records
#: ``compile``: run the training steps through ``torch.compile`` on CUDA (measured by
#: ``python -m bench.perf train --compile``; never required, ignored on the CPU);
#: ``precision``: auto | bf16 | fp32 (``bench.precision``; absent = bf16 on CUDA, fp32 on the CPU);
#: ``warmup_epochs``: linear lr warm-up from 0 over this many epochs, then ``schedule`` over the rest;
#: fine-tuning recipes only (read by ``bench.job``): ``scope`` all | after_frozen_prefix
#: (``bench.prefix``), ``cache_views`` (training views cached there), ``calibrate_bias``
#: (``bench.bias_calibration``, before fine-tuning)
RECIPE_OPTIONAL: dict[str, Any] = {"compile": False, "precision": None, "warmup_epochs": 0, "scope": "all",
                                   "cache_views": 4, "calibrate_bias": False}
SCOPES = ("all", "after_frozen_prefix")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step")


#: what each recipe value must be: (test, description); checked up front so a bad value is a
#: one-line error before any job runs, not a failed job
RECIPE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # the upper bounds are far past any use (a full-batch step on every dataset here; a month of
    # epochs) and stop a typo (1e9) from meaning "run until the job time limit"
    "epochs": (lambda v: _real(v) and 0 <= v <= 100_000, "a finite number in 0..100,000 (fractions allowed)"),
    "batch_size": (lambda v: _integer(v) and 1 <= v <= 2**20, "an integer in 1..1,048,576"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v: _real(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "weight_decay": (lambda v: _real(v) and v >= 0, "a finite number >= 0"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    # 1 would make every target uniform: nothing left to learn
    "label_smoothing": (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "warmup_epochs": (lambda v: _real(v) and v >= 0, "a finite number >= 0"),
    "scope": (lambda v: v in SCOPES, f"one of {', '.join(SCOPES)}"),
    "cache_views": (lambda v: _integer(v) and 1 <= v <= 64, "an integer in 1..64"),
    "calibrate_bias": (lambda v: isinstance(v, bool), "true or false"),
}


def _real(v: Any) -> bool:
    """A finite real number; bools are not numbers here (``epochs: true`` is a typo)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_recipe(recipe: dict[str, Any], where: str = "recipe") -> dict[str, Any]:
    """Recipe with defaults filled in; an unknown key or a value of the wrong type or range
    fails naming the key, the value and what is expected. Values are returned unchanged (they
    are part of the record keys)."""
    if not isinstance(recipe, dict):
        raise ValueError(f"{where} {recipe!r}: expected a mapping of recipe keys "
                         f"({', '.join(sorted(RECIPE_DEFAULTS))})")
    valid = set(RECIPE_DEFAULTS) | set(RECIPE_OPTIONAL)
    bad = sorted(map(str, set(recipe) - valid))
    if bad:
        raise ValueError(f"unknown {where} key(s) {bad}; valid: {', '.join(sorted(valid))}")
    full = {**RECIPE_DEFAULTS, **recipe}
    for key, (ok, expected) in RECIPE_TYPES.items():
        if key not in full:
            continue
        try:
            good = bool(ok(full[key]))
        except TypeError:  # unhashable or incomparable values (a list, a mapping)
            good = False
        if not good:
            raise ValueError(f"{where}.{key} {full[key]!r}: expected {expected}")
    return full


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} asked for, but CUDA is not available (use --device cpu)")
    return device


def prepare_model(model: nn.Module, device: torch.device, precision: str | None = None) -> nn.Module:
    """Move ``model`` to ``device`` in the memory format its (recipe) precision runs in."""
    model.to(device)
    if prec.channels_last(model, prec.resolve(precision, device)):
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048,
             precision: str | None = None) -> float:
    """Top-1 accuracy in percent, in ``precision`` (a recipe value; None: bf16 on CUDA, fp32
    on the CPU, so reported test accuracies on the CPU are fp32 whatever trained them)."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = x.device
    run_as = prec.resolve(precision, device)
    layout = prec.input_layout(model, run_as, device)
    correct = 0
    with prec.autocast(device, run_as):
        for i in range(0, len(y), batch_size):
            xb = prec.to_layout(x[i:i + batch_size], layout)
            correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(y)


def _optimizer(model: nn.Module, r: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if r["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"],
                               nesterov=r["nesterov"] and r["momentum"] > 0, weight_decay=r["weight_decay"])
    cls = torch.optim.Adam if r["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=r["lr"], weight_decay=r["weight_decay"])


def _lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The lr multiplier at ``step`` of ``total``: linear warm-up over the first ``warmup``
    steps, then ``schedule`` over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    step, total = step - warmup, total - warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if schedule == "step":  # x0.1 at 50% and 75%
        return 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))
    return 1.0


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile``d training forward on CUDA; the plain model elsewhere (evaluation and
    state dicts always use the plain model, which shares its parameters)."""
    if device.type != "cuda" or not hasattr(torch, "compile"):
        return model
    return torch.compile(model)


def train(model: nn.Module, data: DataSplits, recipe: dict[str, Any], seed: int = 0,
          epochs: int | None = None, desc: str = "train", progress: bool = True,
          state_path: Path | None = None, state_start: str | None = None) -> dict[str, Any]:
    """Train in place on ``data`` (already on the target device); keep the best-val epoch.

    ``epochs`` may be fractional (0.25 = a quarter of an epoch's steps) for quick fine-tuning.
    ``state_path``: keep the run's state there after every epoch and go on from a state of this
    run found there (``bench.train_state``); the caller deletes it once it has what it needs.
    ``state_start``: the fingerprint of the starting weights, part of what a kept state must match.

    Returns a summary: epochs run, best validation accuracy, wall time (earlier, resumed
    segments included), the epochs and seconds taken from a kept state (``resumed_epochs``,
    ``resumed_s``)."""
    r = check_recipe(recipe)
    epochs = r["epochs"] if epochs is None else epochs
    device = data.x_train.device
    run_as = prec.resolve(r.get("precision"), device)
    prepare_model(model, device, r.get("precision"))
    layout = prec.input_layout(model, run_as, device)
    step_model = _compiled(model, device) if r.get("compile") else model
    if epochs <= 0:
        return {"epochs": 0, "val_acc": evaluate(model, data.x_val, data.y_val, precision=r.get("precision")),
                "time_s": 0.0, "precision": run_as}
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    augment = None
    if data.augment:
        from bench.augment import AUGMENTATIONS
        augment = AUGMENTATIONS[data.augment]
    views = getattr(data, "x_train_views", None)
    opt = _optimizer(model, r)
    n, bs = len(data.y_train), int(r["batch_size"])
    steps_per_epoch = max(1, n // bs)
    total = max(1, round(epochs * steps_per_epoch))  # fractional epochs: a share of the steps
    warmup = min(total - 1, round(r.get("warmup_epochs", 0) * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(r["schedule"], s, total, warmup))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    best_acc, best_state, t0 = -1.0, None, time.perf_counter()
    first, earlier_s, last_kept = 0, 0.0, t0
    ident = None
    if state_path is not None:
        ident = train_state.identity(r, seed, epochs, getattr(data, "fingerprint", None), n, len(data.y_val),
                                     start=state_start)
        kept = train_state.load(state_path, ident, model)
        if kept is not None:
            train_state.restore(kept, model, opt, sched, gen)
            first, best_acc, best_state, earlier_s = kept["epoch"] + 1, kept["best_acc"], kept["best_state"], kept["elapsed_s"]
    n_epochs = math.ceil(total / steps_per_epoch)
    bar = tqdm(range(first, n_epochs), desc=desc, leave=False, disable=not progress, unit="ep",
               initial=first, total=n_epochs)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        running = torch.zeros((), device=device)
        steps = min(steps_per_epoch, total - epoch * steps_per_epoch)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            xb, yb = data.x_train[idx], data.y_train[idx]
            if views is not None:
                xb = pick_views(views, idx, gen)
            elif augment is not None:
                xb = augment(xb, gen)
            with prec.autocast(device, run_as):
                loss = loss_fn(step_model(prec.to_layout(xb, layout)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach()
        mean_loss = (running / steps).item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{desc}: loss is {mean_loss} in epoch {epoch + 1}")
        val_acc = evaluate(model, data.x_val, data.y_val, precision=r.get("precision"))
        if len(data.y_val) == 0 or val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{mean_loss:.3f}", val=f"{val_acc:.2f}")
        now = time.perf_counter()
        if state_path is not None and now - last_kept >= train_state.EVERY_S:
            last_kept = now
            train_state.save(state_path, ident, epoch, model, opt, sched, gen, best_acc, best_state,
                             earlier_s + now - t0)
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs": epochs, "val_acc": best_acc, "time_s": earlier_s + time.perf_counter() - t0,
            "precision": run_as, "resumed_epochs": first, "resumed_s": earlier_s}
