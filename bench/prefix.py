"""Frozen-prefix fine-tuning (``finetune.scope: after_frozen_prefix``).

When a suite compresses only the end of a network (VGG-16's classifier, its last convs),
every layer before the first compressed one is the dense baseline's, unchanged by any method.
Freezing it (eval mode: BatchNorm statistics fixed, no dropout) makes its output a function of
the image alone, so it is computed once per (baseline, split) and every job of that baseline
trains and evaluates the rest of the network on the cached activations: seconds per epoch
instead of minutes on a CPU.

How the cut is made: the modules on the path to the first compressed layer are split into the
ones that run before it (replaced by ``nn.Identity`` while the cache is used) and the rest. The
cache holds that layer's *input*, recorded by a forward pre-hook, so whatever the network's
``forward`` does between modules (a flatten) is captured as well. This needs a forward that
calls its children in the order they are registered: ``check_cuttable`` checks the shapes on
an untrained network when the suite is validated, ``check_cut`` the values on the trained
baseline, and a network whose cut model does not reproduce the whole one is refused.

Augmentation: a frozen prefix cannot see a new random crop every epoch. The cache holds
``views`` versions of each training image: view 0 plain, views 1.. drawn by the dataset's own
augmentation (crop-flip on CIFAR) from a generator seeded by the baseline's seed; each training
sample takes one view at random each time it is drawn (``DataSplits.x_train_views``, read by
``bench.train``). ``x_train`` is view 0, so a method reading the training images directly
(NN-BCD) sees plain images. Training views are computed in the fine-tuning precision (bf16
where it runs: the cost is one prefix pass per view), validation and test inputs in the
evaluation precision, so accuracies read from the cache are those of the whole network.
Every method of a baseline sees the same cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from bench import precision as prec
from bench.data import DataSplits
from bench.errors import InputError

CUT_CHECK_SAMPLES = 8


class PrefixError(InputError, ValueError):
    """The network cannot be cut before this layer (its forward is not a chain of children)."""


def _before(model: nn.Module, layer_name: str) -> list[tuple[str, str]]:
    """(parent path, child name) of every module that runs before ``layer_name``: on each level
    of its dotted path, the siblings registered ahead of the path's module."""
    out, parent, path = [], model, ""
    for part in layer_name.split("."):
        names = [n for n, _ in parent.named_children()]
        if part not in names:
            raise PrefixError(f"no module {layer_name!r} in {type(model).__name__}")
        out += [(path, n) for n in names[:names.index(part)]]
        parent = getattr(parent, part)
        path = f"{path}.{part}" if path else part
    return out


class Cut:
    """Swaps every module before ``layer_name`` for ``nn.Identity`` in ``model``;
    ``restore(m)`` puts the originals back into ``m`` — the same model, or a deep copy of the
    cut one (a tuning trial that won). Parameters after the cut stay the model's own objects."""

    def __init__(self, model: nn.Module, layer_name: str):
        self.swapped = []
        for path, name in _before(model, layer_name):
            parent = model.get_submodule(path)
            self.swapped.append((path, name, getattr(parent, name)))
            setattr(parent, name, nn.Identity())

    def restore(self, model: nn.Module) -> None:
        for path, name, module in self.swapped:
            setattr(model.get_submodule(path), name, module)


def first_layer(model: nn.Module, layer_names: list[str], sample: torch.Tensor) -> str:
    """The compressed layer that runs first (forward order on ``sample``, a batch of one)."""
    order: list[str] = []
    names = set(layer_names)
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: order.append(n))
             for n, m in model.named_modules() if n in names]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(sample)
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise PrefixError(f"none of the layers {layer_names} ran in a forward pass")
    return order[0]


@contextlib.contextmanager
def cut(model: nn.Module, layer_name: str) -> Iterator[nn.Module]:
    """``model`` cut before ``layer_name`` for the duration of the context (``Cut``)."""
    swap = Cut(model, layer_name)
    try:
        yield model
    finally:
        swap.restore(model)


@torch.no_grad()
def layer_inputs(model: nn.Module, layer_name: str, x: torch.Tensor, batch_size: int = 1024,
                 precision: str | None = None, augment=None) -> torch.Tensor:
    """The input ``layer_name`` receives for each image of ``x`` (eval mode; bf16 stored as fp32); batches
    through ``augment(xb)`` first when given."""
    layer = model.get_submodule(layer_name)
    captured: list[torch.Tensor] = []

    def grab(module, inputs):
        t = inputs[0].detach()
        captured.append((t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).contiguous())
        raise _Stop

    hook = layer.register_forward_pre_hook(grab)
    was = model.training
    model.eval()
    run_as = prec.resolve(precision, x.device)
    layout = prec.channels_last(model, run_as)
    try:
        with prec.autocast(x.device, run_as):
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size]
                if augment is not None:
                    xb = augment(xb)
                try:
                    model(prec.to_layout(xb, layout))
                except _Stop:
                    pass
    finally:
        hook.remove()
        model.train(was)
    if not captured:
        return x.new_zeros((0,))
    return torch.cat(captured)


class _Stop(Exception):
    """Raised by the capture hook: nothing after the cut needs computing."""


@dataclass
class PrefixCache:
    """A baseline's activations at the input of ``layer``: ``splits`` trains and evaluates the
    cut network."""

    layer: str
    views: int
    splits: DataSplits
    fingerprint: str


def cached_splits(data: DataSplits, views: torch.Tensor, x_val: torch.Tensor, x_test: torch.Tensor) -> DataSplits:
    """``data`` with its inputs replaced by a prefix's activations: ``views`` (views, n, ...),
    view 0 as ``x_train``; nothing left to augment."""
    return dataclasses.replace(data, x_train=views[0], x_val=x_val, x_test=x_test, augment=None,
                               x_train_views=views if len(views) > 1 else None)


def build_cache(model: nn.Module, layer_name: str, data: DataSplits, seed: int, views: int = 4,
                precision: str | None = None) -> PrefixCache:
    """Compute the cache for ``model`` (the dense baseline) cut before ``layer_name``; training
    views in ``precision`` (the fine-tuning recipe's), the rest as ``evaluate`` runs."""
    if views < 1:
        raise ValueError(f"finetune.cache_views {views!r}: expected an integer >= 1")
    gen = torch.Generator(device=data.x_train.device).manual_seed(seed)
    aug = None
    if data.augment:
        from bench.augment import AUGMENTATIONS
        aug = AUGMENTATIONS[data.augment]
    train_views = [layer_inputs(model, layer_name, data.x_train, precision=precision)]
    for _ in range(1, views):
        if aug is None:  # nothing to vary: every view would be view 0
            train_views.append(train_views[0])
        else:
            train_views.append(layer_inputs(model, layer_name, data.x_train, precision=precision,
                                            augment=lambda xb: aug(xb, gen)))
    stacked = torch.stack(train_views) if views > 1 else train_views[0].unsqueeze(0)
    splits = cached_splits(data, stacked, layer_inputs(model, layer_name, data.x_val),
                           layer_inputs(model, layer_name, data.x_test))
    check_cut(model, layer_name, data.x_val[:CUT_CHECK_SAMPLES], splits.x_val[:CUT_CHECK_SAMPLES])
    return PrefixCache(layer_name, views, splits, data.fingerprint)


@torch.no_grad()
def check_cuttable(model: nn.Module, layer_names: list[str], input_shape: tuple[int, ...]) -> None:
    """Shape-level check on an untrained (meta-device) network, before any job runs: cut before
    its first compressed layer, it must map that layer's input to the full model's output
    shape. ``check_cut`` compares values once the baseline is trained."""
    device = next(model.parameters()).device
    x = torch.zeros(2, *input_shape, device=device)
    first = first_layer(model, layer_names, x)
    held: list[torch.Tensor] = []
    hook = model.get_submodule(first).register_forward_pre_hook(lambda m, i: held.append(i[0]))
    was = model.training
    model.eval()
    try:
        out = model(x)
    finally:
        hook.remove()
    try:
        with cut(model, first):
            part = model(held[0])
    except RuntimeError as e:
        raise PrefixError(_not_a_chain(model, first, str(e).splitlines()[0])) from None
    finally:
        model.train(was)
    if part.shape != out.shape:
        raise PrefixError(_not_a_chain(model, first, f"output shape {tuple(part.shape)} != {tuple(out.shape)}"))


def _not_a_chain(model: nn.Module, first: str, why: str) -> str:
    return (f"finetune.scope after_frozen_prefix: {type(model).__name__} cannot be cut before {first!r} ({why}); "
            f"its forward is not a chain of its children in registration order (use finetune.scope: all)")


@torch.no_grad()
def check_cut(model: nn.Module, layer_name: str, x: torch.Tensor, cached: torch.Tensor,
              precision: str | None = None) -> None:
    """The cut model on the cached inputs must give the full model's outputs (eval mode)."""
    if len(x) == 0:
        return
    was = model.training
    model.eval()
    try:
        run_as = prec.resolve(precision, x.device)
        with prec.autocast(x.device, run_as):
            full = model(prec.to_layout(x, prec.channels_last(model, run_as))).float()
            with cut(model, layer_name):
                part = model(cached).float()
    finally:
        model.train(was)
    tol = 1e-2 if run_as == "bf16" else 1e-4
    if part.shape != full.shape or not torch.allclose(part, full, rtol=tol, atol=tol * full.abs().max().item()):
        raise PrefixError(_not_a_chain(model, layer_name, "the cut model's outputs differ from the whole model's"))


def pick_views(views: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Samples ``idx`` of a (views, n, ...) cache, each from one view drawn uniformly."""
    choice = torch.randint(0, views.shape[0], (len(idx),), generator=generator, device=views.device)
    return views[choice, idx]
