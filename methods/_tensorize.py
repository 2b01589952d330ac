"""Shared helpers of the tensor-decomposition baselines (``tt``, ``tucker``, ``cp``).

* how a layer's weight is viewed as a matrix or a higher-order tensor (balanced integer
  factorisations of its dimensions),
* running tensorly decompositions (pytorch backend) on float64 copies of the weight on the
  layer's device, with the backend set only for the duration of the call,
* knob validation and clipping, and the convolution geometry the replacements reproduce.
"""
from __future__ import annotations

import functools
import math
import operator
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init  # factor modules are overwritten: no random init, no RNG use

from bench.compressor import CompressionError


# --- layers ---------------------------------------------------------------------------------
def check_layer(layer: nn.Module, method: str) -> None:
    """Only ungrouped Linear/Conv2d layers can be decomposed."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise CompressionError(f"{method}: grouped convolutions (groups={layer.groups}) are not supported")
        return
    if not isinstance(layer, nn.Linear):
        raise CompressionError(f"{method}: can only factorise Linear/Conv2d, got {type(layer).__name__}")


def folded_shape(layer: nn.Module) -> tuple[int, int]:
    """(out, fan_in) of the weight viewed as a matrix (conv: fan_in = in * kh * kw)."""
    w = layer.weight
    return int(w.shape[0]), int(math.prod(w.shape[1:]))


def bias_params(layer: nn.Module) -> int:
    return 0 if layer.bias is None else int(layer.bias.numel())


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """A detached float64 copy on the weight's device (CPU where float64 is unsupported):
    decompositions never run in low precision, and run on the GPU when the layer is there."""
    device = t.device if t.device.type in ("cpu", "cuda") else torch.device("cpu")
    return t.detach().to(device=device, dtype=torch.float64, copy=True)


def to_param(a: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    """A parameter on ``like``'s device and dtype (decomposition results are cast back)."""
    return nn.Parameter(torch.as_tensor(a).detach().to(device=like.device, dtype=like.dtype).contiguous())


def bias_param(layer: nn.Module) -> nn.Parameter | None:
    return None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())


def with_torch_backend(fn: Callable, *args, **kwargs):
    """Run a tensorly function on torch tensors with tensorly's pytorch backend, set for this
    thread only and restored afterwards (``tl.set_backend`` is otherwise process-global)."""
    import tensorly as tl

    with tl.backend_context("pytorch", local_threadsafe=True):
        return fn(*args, **kwargs)


# --- knobs ----------------------------------------------------------------------------------
def clip_knob(knob: Any, largest: int, method: str, what: str = "rank") -> tuple[int, bool]:
    """(knob clipped to ``1..largest``, whether it was clipped); rejects non-integers and < 1."""
    if isinstance(knob, float) and knob.is_integer():
        knob = int(knob)
    try:
        if isinstance(knob, bool):
            raise TypeError
        k = operator.index(knob)
    except TypeError:
        raise CompressionError(f"{method}: {what} must be a positive integer, got {knob!r}") from None
    if k < 1:
        raise CompressionError(f"{method}: {what} must be >= 1, got {k} (valid: 1..{largest})")
    return (largest, True) if k > largest else (k, False)


# --- factorisations of dimensions -----------------------------------------------------------
@functools.lru_cache(maxsize=None)
def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """``d`` integers (1s allowed) with product ``n``, as equal as possible, largest first.

    Minimises the largest factor, then the next largest, and so on (lexicographically on the
    descending tuple). A prime p gives (p, 1, ..., 1): badly factoring sizes get uneven factors
    rather than padding, so the replacement computes exactly the original shape.
    """
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")

    def divisors(m: int) -> list[int]:
        small = [f for f in range(1, math.isqrt(m) + 1) if m % f == 0]
        return sorted(set(small + [m // f for f in small]))

    def best(rest: int, slots: int, cap: int) -> tuple[int, ...] | None:
        # the smallest feasible leading factor, then recursively the best completion
        if slots == 1:
            return (rest,) if rest <= cap else None
        for f in divisors(rest):
            if f > cap:
                break
            if f ** slots < rest:
                continue  # the largest of `slots` factors cannot be below rest ** (1/slots)
            sub = best(rest // f, slots - 1, f)
            if sub is not None:
                return (f,) + sub
        return None

    found = best(n, d, n)
    assert found is not None and math.prod(found) == n
    return found


def organ_pipe(factors: Sequence[int]) -> tuple[int, ...]:
    """Largest factors in the middle, smallest at both ends (e.g. 784 -> 4 x 7 x 7 x 4), the
    arrangement of the TT/MPO papers (Novikov et al. 2015; Gao et al. 2020)."""
    out: deque[int] = deque()
    for i, f in enumerate(sorted(factors, reverse=True)):
        out.append(f) if i % 2 == 0 else out.appendleft(f)
    return tuple(out)


def side_modes(n: int, per_side: int) -> tuple[int, ...]:
    """Mode sizes of one side (out or in) of a Linear weight seen as a higher-order tensor:
    ``per_side`` balanced factors of ``n`` with the 1s dropped (at least one mode kept)."""
    fs = tuple(f for f in balanced_factors(n, per_side) if f > 1)
    return fs or (1,)


# --- convolutions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    """What a factorised conv needs to reproduce the original's geometry."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: Any  # tuple[int, int] or 'same'/'valid', as nn.Conv2d takes it
    dilation: tuple[int, int]
    padding_mode: str
    reversed_padding: tuple[int, ...]  # nn.Conv2d's _reversed_padding_repeated_twice
    groups: int = 1  # the decompositions refuse grouped convs (check_layer); ADTN keeps them

    @classmethod
    def of(cls, layer: nn.Conv2d) -> "ConvSpec":
        return cls(layer.in_channels, layer.out_channels, tuple(layer.kernel_size), tuple(layer.stride),
                   layer.padding if isinstance(layer.padding, str) else tuple(layer.padding),
                   tuple(layer.dilation), layer.padding_mode, tuple(layer._reversed_padding_repeated_twice),
                   layer.groups)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The original conv with a given kernel (same semantics as nn.Conv2d's forward)."""
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of the output for an (h, w) input."""
        if self.padding == "same":
            return h, w
        pad = (0, 0) if self.padding == "valid" else self.padding
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                     zip((h, w), pad, self.dilation, self.kernel_size, self.stride))

    def _axis_geometry(self, axis: int) -> tuple[tuple[int, int], Any, tuple[int, int]]:
        """(stride, padding, dilation) of a conv along one spatial axis only: that axis keeps the
        original values, the other gets 1 / 0 / 1 ('same'/'valid' padding strings stay)."""
        stride, dilation = [1, 1], [1, 1]
        stride[axis], dilation[axis] = self.stride[axis], self.dilation[axis]
        if isinstance(self.padding, str):
            padding: Any = self.padding
        else:
            padding = [0, 0]
            padding[axis] = self.padding[axis]
            padding = tuple(padding)
        return tuple(stride), padding, tuple(dilation)

    def axis_conv(self, x: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
        """Convolve along one spatial axis (weight (cout, cin, kh, 1) or (cout, cin, 1, kw))
        with that axis' stride/padding/dilation; the two in sequence give the original geometry,
        also for non-zero padding modes (padding one axis commutes with convolving the other)."""
        stride, padding, dilation = self._axis_geometry(axis)
        if self.padding_mode != "zeros":
            wl, wr, ht, hb = self.reversed_padding
            x = F.pad(x, (0, 0, ht, hb) if axis == 0 else (wl, wr, 0, 0), mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, weight, None, stride, padding, dilation)

    def axis(self, axis: int, channels: int, **kw) -> nn.Conv2d:
        """A depthwise conv along one spatial axis (0: kh x 1, 1: 1 x kw) carrying that axis'
        stride/padding/dilation; two of them in sequence reproduce the original geometry."""
        k = [1, 1]
        k[axis] = self.kernel_size[axis]
        stride, padding, dilation = self._axis_geometry(axis)
        return skip_init(nn.Conv2d, channels, channels, tuple(k), stride=stride, padding=padding,
                         dilation=dilation, groups=channels, bias=False, padding_mode=self.padding_mode, **kw)

    def core(self, cin: int, cout: int, **kw) -> nn.Conv2d:
        """A full kh x kw conv with the original geometry (Tucker-2 core)."""
        return skip_init(nn.Conv2d, cin, cout, self.kernel_size, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, bias=False, padding_mode=self.padding_mode, **kw)


def pointwise(cin: int, cout: int, bias: bool, **kw) -> nn.Conv2d:
    return skip_init(nn.Conv2d, cin, cout, 1, bias=bias, **kw)


def flatten_batch(x: torch.Tensor, features: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(x as (B, features), leading shape) so a Linear replacement accepts any (..., in)."""
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, features), lead


def factorized_linear_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Forward of a factorised Linear (TT, Tucker): contract the input with the factors when
    that costs fewer flops for this batch than forming the dense matrix, else form it.

    ``layer`` provides ``n``, ``m``, ``bias``, ``_contract_flops``, ``_form_flops``,
    ``contract(x2)`` and ``matrix()``."""
    x2, lead = flatten_batch(x, layer.n)
    b = x2.shape[0]
    if b * layer._contract_flops < layer._form_flops + b * layer.m * layer.n:
        y = layer.contract(x2)
        y = y if layer.bias is None else y + layer.bias
    else:
        y = F.linear(x2, layer.matrix(), layer.bias)
    return y.reshape(*lead, layer.m)
