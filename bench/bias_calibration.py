"""Bias calibration after compression: no dead starts (protocol v3, ``finetune.calibrate_bias``).

A layer compressed far below its dense size keeps its dense bias, but its weight term shrinks
(rank 1 on LeNet-5's conv2 at 32x): a negative dense bias then dominates and most channels
never fire, the next layers see almost nothing, and fine-tuning starts from a constant
prediction it cannot leave (the loss stays at ln 10, the gradient reaches zero).

The rule, the same for every method and adding no parameter: on ``CALIBRATION_IMAGES`` training
images (eval mode, no augmentation), shift each output channel's bias of each compressed
layer, in forward order, so that the channel is *active as often as the dense layer's channel*
on the same images. Active means the nonlinearity after the layer lets it through: the output
above 0 (a ReLU follows), or above the BatchNorm's zero crossing when a BatchNorm follows it
in its ``nn.Sequential`` (below it where the BatchNorm's scale is negative). A layer whose
compressed channels already fire as often is left as it is; layers without a bias are skipped.

Rule 2 (``CALIBRATION_RULE``; it is part of the record key) first makes the shift possible: a
shift can only pick *which* samples fire if the layer's output varies across samples. A layer
fitted from very few parameters can keep almost none of its dense weight term (ADTN's
least-squares start on VGG-16's classifier: the fit's norm is a few % of the dense weight's
or less), and then its output is its bias up to a sliver that bf16 rounds away: rule 1 left
every channel of both VGG-16 layers dead (the record of the headline ADTN job before this
rule). So when a layer's output spread on the calibration images (per-channel standard
deviation, root mean square over channels) is below ``MIN_SPREAD`` of the dense layer's, its
weight term is multiplied by the one number that lifts it to that fraction
(``FactorizedLayer.scale_weight_``: folded into one factor, core or the ADTN gates, no new
parameter), then the biases are shifted. Layers at or above that fraction are not rescaled:
rescaling all of them to the dense scale made cp/svd/tucker/alds on LeNet-5 diverge at lr 0.03
in the probe behind protocol v3 (#21). ``dead_after`` is measured by running the calibrated
layer again.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.layers import get_layer

CALIBRATION_IMAGES = 2048
#: the calibration rule's version, in the record key of every job that calibrates
CALIBRATION_RULE = 2
#: a compressed layer's output spread below this fraction of the dense layer's is lifted to it
MIN_SPREAD = 0.25


def _next_batchnorm(model: nn.Module, name: str) -> nn.Module | None:
    """The BatchNorm right after ``name`` in its parent ``nn.Sequential``, if there is one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    names = [n for n, _ in parent.named_children()]
    i = names.index(child)
    nxt = getattr(parent, names[i + 1]) if i + 1 < len(names) else None
    return nxt if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) else None


def _thresholds(bn: nn.Module | None, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: the output value where the next nonlinearity turns on, and its direction
    (+1: active above, -1: active below, 0: never active: a zero BatchNorm scale)."""
    if bn is None:
        return torch.zeros(channels, device=device), torch.ones(channels, device=device)
    gamma, beta = bn.weight.detach().float(), bn.bias.detach().float()
    mean, std = bn.running_mean.float(), torch.sqrt(bn.running_var.float() + bn.eps)
    sign = torch.sign(gamma)
    safe = torch.where(gamma == 0, torch.ones_like(gamma), gamma)
    return mean - beta * std / safe, sign


def _channel_values(out: torch.Tensor) -> torch.Tensor:
    """(channels, samples) view of a layer's output: (N, C) or (N, C, H, W), at least fp32."""
    v = out.transpose(0, 1).reshape(out.shape[1], -1)
    return v if v.dtype == torch.float64 else v.float()


@torch.no_grad()
def _outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    # a copy, not the output itself: an in-place ReLU after the layer (VGG's classifier) would
    # overwrite it, so a dead layer read as constant zeros and was neither lifted nor shifted
    hooks = [get_layer(model, n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o.detach().clone()))
             for n in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return store


def _shift(dense: torch.Tensor, comp: torch.Tensor, t: torch.Tensor, sign: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-channel bias shift making ``comp`` active as often as ``dense`` (both (C, S)), and
    how many channels needed one."""
    d, c = dense * sign[:, None], comp * sign[:, None]     # active = value above t * sign
    tt = t * sign
    k = (d > tt[:, None]).sum(1)                            # dense activity count per channel
    have = (c > tt[:, None]).sum(1)
    s = c.sort(dim=1, descending=True).values              # s[:, j]: the (j+1)-th largest
    n = s.shape[1]
    hi = s.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1)
    lo = s.gather(1, k.clamp(max=n - 1)[:, None]).squeeze(1)
    margin = 1e-3 * s.abs().amax(1) + 1e-6
    target = torch.where(k == 0, s[:, 0] + margin, torch.where(k == n, s[:, -1] - margin, (hi + lo) / 2))
    delta = torch.where((have == k) | (sign == 0), torch.zeros_like(tt), tt - target) * sign
    return delta, int(((have != k) & (sign != 0)).sum())


@torch.no_grad()
def _weight_term(model: nn.Module, name: str, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C, S) output of layer ``name`` with its bias held at zero: a weight term far below the
    bias would be rounded away in the output itself."""
    kept = bias.detach().clone()
    bias.zero_()
    try:
        return _channel_values(_outputs(model, [name], x)[name].double())
    finally:
        bias.copy_(kept)


def _spread(values: torch.Tensor) -> float:
    """Root mean square over channels of each channel's standard deviation over samples."""
    return float(values.std(dim=1, unbiased=False).pow(2).mean().sqrt())


def _lift(layer: nn.Module, dense_spread: float, comp_spread: float) -> tuple[float, str | None]:
    """Rescale ``layer``'s weight term so its spread is at least ``MIN_SPREAD`` of the dense
    one; returns (factor applied, why none was where one was needed)."""
    if dense_spread == 0 or comp_spread >= MIN_SPREAD * dense_spread:
        return 1.0, None
    if comp_spread == 0:
        return 1.0, "output constant on the calibration images: nothing to rescale"
    scale = getattr(layer, "scale_weight_", None)
    if scale is None:
        return 1.0, f"{type(layer).__name__} has no scale_weight_()"
    factor = MIN_SPREAD * dense_spread / comp_spread
    try:
        scale(factor)
    except NotImplementedError as e:
        return 1.0, str(e)
    return factor, None


@torch.no_grad()
def calibrate(model: nn.Module, dense: nn.Module, layer_names: list[str], x: torch.Tensor) -> dict[str, Any]:
    """Lift starved weight terms, then shift the biases of ``model``'s compressed layers (in
    place) so each channel fires as often as in ``dense`` on ``x``; returns per-layer counts for
    the record. Both models are in eval mode for the duration."""
    was = model.training, dense.training
    model.eval()
    dense.eval()
    try:
        ref = _outputs(dense, layer_names, x)
        order = list(ref)  # forward order: the hooks fired in it
        info: dict[str, Any] = {}
        for name in order:
            layer = get_layer(model, name)
            bias = getattr(layer, "bias", None)
            if not isinstance(bias, torch.Tensor):
                info[name] = {"skipped": "no bias"}
                continue
            d, c = _channel_values(ref[name]), _channel_values(_outputs(model, [name], x)[name])
            t, sign = _thresholds(_next_batchnorm(model, name), d.shape[0], d.device)
            dead = lambda v: int(((v * sign[:, None]) <= (t * sign)[:, None]).all(1).sum())  # noqa: E731
            entry = {"channels": int(d.shape[0]), "dead_dense": dead(d), "dead_before": dead(c)}
            spread_d, spread_c = _spread(d), _spread(_weight_term(model, name, bias, x))
            entry["spread_ratio"] = spread_c / spread_d if spread_d else None
            factor, why_not = _lift(layer, spread_d, spread_c)
            entry["weight_scale"] = factor
            if why_not:
                entry["not_rescaled"] = why_not
            if factor != 1.0:
                c = _channel_values(_outputs(model, [name], x)[name])
            delta, moved = _shift(d, c, t, sign)
            bias.add_(delta.to(bias.dtype).view_as(bias))
            entry.update(shifted=moved, mean_abs_shift=float(delta.abs().mean()),
                         dead_after=dead(_channel_values(_outputs(model, [name], x)[name])))
            info[name] = entry
        return info
    finally:
        model.train(was[0])
        dense.train(was[1])


def calibration_images(x_train: torch.Tensor, seed: int, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """A fixed random subset of the training inputs (seeded by the job's seed)."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(x_train), generator=g)[:n]
    return x_train[idx.to(x_train.device)]
