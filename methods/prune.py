"""``prune``: global magnitude pruning, then the suite's fine-tuning.

The standard unstructured-pruning baseline (Han et al., "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015; the global variant as in
Blalock et al., "What is the State of Neural Network Pruning?", MLSys 2020): one magnitude
threshold across all target layers keeps the largest |w| so that kept weights plus (dense)
biases meet the budget exactly. Knob per layer = number of kept weights.

The replacement keeps the weight and a 0/1 mask buffer and computes with ``weight * mask``,
so gradient steps never revive a pruned weight (its gradient is zero and its stored value is
zero, so weight decay and momentum leave it at zero too). ``params`` counts the kept
(unmasked) weights plus biases: ``params_counted_as = "non-zero weights"``.

Ties in magnitude are broken by position (earlier layer, then lower flat index, first), so
the kept count is exact and reproducible.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import BudgetUnreachable, CompressionError, Compressor, FactorizedLayer
from bench.registry import register_method
from bench.layers import ConvSpec, bias_params, check_layer, count_params
from bench.options import number




def magnitude_order(weight: torch.Tensor) -> torch.Tensor:
    """Flat indices of ``weight`` by decreasing |w|, ties by increasing index."""
    return torch.sort(weight.detach().abs().flatten(), descending=True, stable=True).indices


def top_k_mask(weight: torch.Tensor, kept: int) -> torch.Tensor:
    """0/1 mask (weight's shape and dtype) keeping exactly ``kept`` largest-magnitude entries."""
    if not 0 <= kept <= weight.numel():
        raise CompressionError(f"cannot keep {kept} of {weight.numel()} weights")
    mask = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
    mask[magnitude_order(weight)[:kept]] = 1
    return mask.reshape(weight.shape)


class PrunedLayer(FactorizedLayer):
    """A Linear/Conv2d whose forward uses ``weight * mask``; the mask is a buffer."""

    def __init__(self, layer: nn.Module, mask: torch.Tensor):
        super().__init__()
        check_layer(layer, "prune", grouped_ok=True)
        self.inner = copy.deepcopy(layer)
        self.conv = ConvSpec.of(layer) if isinstance(layer, nn.Conv2d) else None
        self.register_buffer("mask", mask.to(layer.weight.dtype).clone())
        with torch.no_grad():
            self.inner.weight.mul_(self.mask)
        self.tnbench_info = {"kept": int(self.mask.sum().item()), "total": self.mask.numel()}

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (and zero the newly pruned weights)."""
        with torch.no_grad():
            self.mask.copy_(mask)
            self.inner.weight.mul_(self.mask)
        self.tnbench_info = {"kept": int(self.mask.sum().item()), "total": self.mask.numel()}

    def weight_factor(self) -> torch.Tensor:
        return self.inner.weight

    def effective_weight(self) -> torch.Tensor:
        return self.inner.weight * self.mask

    def kept(self) -> int:
        return int(self.mask.sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        if self.conv is None:
            return F.linear(x, w, self.inner.bias)
        return self.conv.conv(x, w, self.inner.bias)


def pruned_params(module: nn.Module) -> int:
    """Kept weights (mask ones) plus every other parameter (biases) of a built module."""
    if isinstance(module, PrunedLayer):
        return module.kept() + bias_params(module.inner)
    return count_params(module)


@register_method("prune")
class GlobalMagnitudePrune(Compressor):
    knob_name = "kept weights"
    params_counted_as = "non-zero weights"
    allocation_uses_weights = True

    def knobs(self, layer: nn.Module) -> range:
        """Every kept count 0..numel (a lazy sequence: layers can have millions of weights)."""
        check_layer(layer, "prune", grouped_ok=True)
        return range(0, layer.weight.numel() + 1)

    def layer_params(self, layer: nn.Module, kept: int) -> int:
        check_layer(layer, "prune", grouped_ok=True)
        return kept_count(kept, layer, "prune") + bias_params(layer)

    def factorize(self, layer: nn.Module, kept: int) -> nn.Module:
        check_layer(layer, "prune", grouped_ok=True)
        return PrunedLayer(layer, top_k_mask(layer.weight, kept_count(kept, layer, "prune")))

    def module_params(self, module: nn.Module) -> int:
        return pruned_params(module)

    def allocate(self, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, int]:
        """One global threshold: the ``K`` largest |w| over all target layers, where ``K`` is
        round(dense / target_ratio) minus the biases (which stay dense)."""
        return global_magnitude_allocation(layers, target_ratio)


def kept_count(kept, layer: nn.Module, method: str) -> int:
    """A kept-weight count as a whole number in 0..numel: ``int(1.5)`` would plan and build one
    weight under a key that says 1.5."""
    n = layer.weight.numel()
    try:
        return number(method, "kept weights", kept, integer=True, lo=0, hi=n)
    except ValueError:
        raise CompressionError(f"{method}: kept weights must be a whole number in 0..{n:,}, got {kept!r}") from None


def global_magnitude_allocation(layers: dict[str, nn.Module], target_ratio: float) -> dict[str, int]:
    if target_ratio <= 0:
        raise CompressionError(f"target ratio must be positive, got {target_ratio}")
    for layer in layers.values():
        check_layer(layer, "prune", grouped_ok=True)
    names = list(layers)
    biases = sum(bias_params(layers[n]) for n in names)
    total_w = sum(layers[n].weight.numel() for n in names)
    target = round((total_w + biases) / target_ratio)
    kept = min(target - biases, total_w)
    if kept < 0:
        raise BudgetUnreachable(
            f"budget of {target} parameters (ratio {target_ratio}) is below the {biases} biases "
            f"that pruning keeps dense")
    dtype = torch.float64 if any(layers[n].weight.dtype == torch.float64 for n in names) else torch.float32
    # upcasting is exact, so the order (and ties) match what top_k_mask sees per layer
    mags = torch.cat([layers[n].weight.detach().abs().flatten().to("cpu", dtype) for n in names])
    owner = torch.cat([torch.full((layers[n].weight.numel(),), i, dtype=torch.long)
                       for i, n in enumerate(names)])
    # stable sort keeps the concatenation order (layer, then flat index) among equal values,
    # which is the same tie-break top_k_mask uses inside one layer
    order = torch.sort(mags, descending=True, stable=True).indices[:kept]
    counts = torch.bincount(owner[order], minlength=len(names))
    return {n: int(counts[i]) for i, n in enumerate(names)}
