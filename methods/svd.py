"""``svd``: truncated SVD of the (folded) weight; knob = rank r.

Linear(in, out) -> Linear(in, r) then Linear(r, out).
Conv2d(in, out, k) -> Conv2d(in, r, k) (same stride/padding) then a 1x1 Conv2d(r, out).
The bias stays dense on the second factor.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.allocation import working_copy
from bench.compressor import CompressionError, Compressor, FactorizedLayer
from bench.registry import register_method
from bench.layers import check_layer
from methods._tensorize import clip_knob


def _fold(layer: nn.Module) -> torch.Tensor:
    """The weight as an (out, fan_in) matrix; conv kernels fold in x kh x kw into fan_in."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)




def low_rank_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B the best rank-``rank`` approximation, singular values split evenly."""
    work = matrix.float() if matrix.dtype in (torch.float16, torch.bfloat16) else matrix
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(matrix.dtype), (root[:, None] * vh[:rank]).to(matrix.dtype)


class LowRankLayer(FactorizedLayer):
    """Two stacked layers (first: to ``rank`` channels, no bias; second: carries the bias)."""

    def __init__(self, first: nn.Module, second: nn.Module, out_shape: torch.Size):
        super().__init__()
        self.first, self.second = first, second
        self.out_shape = tuple(out_shape)
        self.tnbench_info = {}

    @property
    def bias(self) -> torch.Tensor | None:
        """The output bias (held by the last factor): what bias calibration shifts."""
        return self.second.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def weight_factor(self) -> torch.Tensor:
        return self.first.weight

    def effective_weight(self) -> torch.Tensor:
        a = self.second.weight.reshape(self.second.weight.shape[0], -1)
        b = self.first.weight.reshape(self.first.weight.shape[0], -1)
        return (a @ b).reshape(self.out_shape)


def build_low_rank(layer: nn.Module, rank: int) -> LowRankLayer:
    check_layer(layer, "svd")
    w = _fold(layer)
    a, b = low_rank_factors(w, rank)
    has_bias = layer.bias is not None
    kw = dict(device=w.device, dtype=w.dtype)
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False, **kw)
        second = nn.Linear(rank, layer.out_features, bias=has_bias, **kw)
        first.weight.data.copy_(b)
        second.weight.data.copy_(a)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, bias=False,
                          padding_mode=layer.padding_mode, **kw)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias, **kw)
        first.weight.data.copy_(b.reshape(first.weight.shape))
        second.weight.data.copy_(a.reshape(second.weight.shape))
    if has_bias:
        second.bias.data.copy_(layer.bias.detach())
    return LowRankLayer(first, second, layer.weight.shape)


@register_method("svd")
class TruncatedSVD(Compressor):
    knob_name = "rank"

    def knobs(self, layer: nn.Module) -> list[int]:
        check_layer(layer, "svd")
        return list(range(1, min(_fold(layer).shape) + 1))

    def layer_params(self, layer: nn.Module, rank: int) -> int:
        check_layer(layer, "svd")
        out, fan_in = _fold(layer).shape
        rank, clipped = clip_knob(rank, min(out, fan_in), "svd")  # refuses a non-integer or one below 1
        if clipped:  # as factorize does: there is no rank above full rank
            raise CompressionError(f"svd rank above full rank {rank} for {layer}")
        return rank * (out + fan_in) + (out if layer.bias is not None else 0)

    # --- minmax allocation: the error of rank r is sigma_{r+1} / sigma_1 (Eckart-Young) ---------
    knob_error_is_cheap = True

    def knob_error(self, layer: nn.Module, rank: int) -> float:
        s = self._singular_values(layer)
        return float(s[rank] / s[0]) if rank < len(s) and s[0] > 0 else 0.0

    def _singular_values(self, layer: nn.Module) -> torch.Tensor:
        """The folded weight's singular values, computed once per layer and weight version."""
        key = (id(layer), layer.weight.data_ptr(), layer.weight._version)
        cache = self.__dict__.setdefault("_svals", {})
        if key not in cache:
            cache.clear()
            cache[key] = torch.linalg.svdvals(working_copy(_fold(layer))).cpu()
        return cache[key]

    def factorize(self, layer: nn.Module, rank: int) -> nn.Module:
        if not 1 <= rank <= min(_fold(layer).shape):
            raise CompressionError(f"svd rank {rank} outside 1..{min(_fold(layer).shape)} for {layer}")
        return build_low_rank(layer, int(rank))
