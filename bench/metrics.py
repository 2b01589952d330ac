"""Measurements of a (compressed) network: parameters, FLOPs, weight-space fit error."""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.layers import count_params, direct_convs, effective_weight  # noqa: F401 (count_params re-exported)


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int | None:
    """FLOPs of one eval-mode forward pass of a single input (matmuls and convolutions).

    A warm-up pass first, so layers that cache a generated weight in eval mode (ADTN) are
    counted at their inference cost."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # very old torch
        return None
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)
    model(x)
    counter = FlopCounterMode(display=False)
    with counter, direct_convs():  # a conv counts as one, however a replacement runs it
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def fit_errors(originals: dict[str, nn.Module], replacements: dict[str, nn.Module]) -> tuple[float, dict[str, float]]:
    """Relative error ||W - What|| / ||W|| over all layers together, and per layer."""
    per_layer, num, den = {}, 0.0, 0.0
    for name, layer in originals.items():
        w = layer.weight.detach().double()
        w_hat = effective_weight(replacements[name]).detach().double().reshape(w.shape)
        d2, n2 = (w - w_hat).pow(2).sum().item(), w.pow(2).sum().item()
        per_layer[name] = math.sqrt(d2 / n2) if n2 else float("nan")
        num, den = num + d2, den + n2
    return (math.sqrt(num / den) if den else float("nan")), per_layer
