"""Layer helpers for methods and plugins: which layers a method may take, their geometry, and
how parameters are counted. One public module so every method checks and counts the same way.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init  # factor modules are overwritten: no random init, no RNG use

COMPRESSIBLE = (nn.Linear, nn.Conv2d)
#: True inside ``direct_convs`` (per thread and context: nesting restores the outer value)
_DIRECT_CONVS = contextvars.ContextVar("direct_convs", default=False)


class CompressionError(ValueError):
    """A method cannot build what was asked (bad shape, knob out of range...)."""


def check_layer(layer: nn.Module, method: str, kinds: tuple[type, ...] = COMPRESSIBLE,
                grouped_ok: bool = False) -> None:
    """Refuse, with a message naming ``method``, a layer it cannot compress: anything but
    ``kinds``, and grouped convolutions unless ``grouped_ok``."""
    if not isinstance(layer, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise CompressionError(f"{method} compresses {names} layers, got {type(layer).__name__}")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1 and not grouped_ok:
        raise CompressionError(f"{method}: grouped convolutions (groups={layer.groups}) are not supported")


def count_params(module: nn.Module) -> int:
    """Every parameter element of a module (a dense layer: weight and bias)."""
    return sum(p.numel() for p in module.parameters())


dense_params = count_params  # the name the contract uses for an original Linear/Conv2d


def bias_params(layer: nn.Module) -> int:
    return 0 if getattr(layer, "bias", None) is None else int(layer.bias.numel())


def folded_shape(layer: nn.Module) -> tuple[int, int]:
    """(out, fan_in) of the weight viewed as a matrix (conv: fan_in = in/groups * kh * kw)."""
    w = layer.weight
    return int(w.shape[0]), int(math.prod(w.shape[1:]))


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The dense weight a (possibly factorised) layer computes, shaped like the original's.

    Factorised modules expose ``effective_weight()``; plain layers return their weight."""
    if hasattr(module, "effective_weight"):
        return module.effective_weight()
    if isinstance(module, COMPRESSIBLE):
        return module.weight
    raise TypeError(f"{type(module).__name__} has no effective_weight(); factorised layers must define it")


def get_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)]
        raise CompressionError(f"network has no layer {name!r}; its Linear/Conv2d layers: {', '.join(names)}") from None


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


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
        """The original conv with a given kernel (same semantics as nn.Conv2d's forward); on a map
        no larger than the kernel, as the equivalent matrix product (``as_linear``)."""
        if self.linear_is_cheaper(x):
            return self.as_linear(x, weight, bias)
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def linear_is_cheaper(self, x: torch.Tensor) -> bool:
        """Whether ``as_linear`` does no more multiply-adds than the direct conv: a batched map with
        no more positions than the kernel has taps (VGG-16's last convs on CIFAR's 2x2 maps: the
        direct conv multiplies 9 taps per position, 5 of them into the zero padding, and runs
        2.6x slower on one CPU thread in bf16)."""
        return (not _DIRECT_CONVS.get() and x.dim() == 4 and self.groups == 1 and self.padding_mode == "zeros"
                and x.shape[2] * x.shape[3] <= self.kernel_size[0] * self.kernel_size[1])

    def as_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The conv as one matrix product: on an (h, w) map it is a linear map from the
        cin*h*w inputs to the cout*ho*wo outputs whose entries are kernel taps (or zero where
        a tap falls into the padding). The matrix is gathered from ``weight`` (gradients flow
        back to it) in the order of ``x``'s memory format, so the input is not copied. Only where
        ``linear_is_cheaper`` says so (one group, zero padding)."""
        n, c, h, w = x.shape
        ho, wo = self.out_hw(h, w)
        o, kh, kw = weight.shape[0], *self.kernel_size
        taps = _tap_index(h, w, ho, wo, self.kernel_size, self.stride, self.dilation,
                          (self.reversed_padding[2], self.reversed_padding[0]), str(x.device))
        kernel = F.pad(weight.reshape(o, c, kh * kw), (0, 1))  # the last tap: zero, for the padding
        matrix = kernel[:, :, taps]  # (cout, cin, out positions, in positions)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = F.linear(x.permute(0, 2, 3, 1).reshape(n, h * w * c),
                         matrix.permute(2, 0, 3, 1).reshape(ho * wo * o, h * w * c),
                         None if bias is None else bias.repeat(ho * wo))
            return y.view(n, ho, wo, o).permute(0, 3, 1, 2)
        y = F.linear(x.reshape(n, c * h * w), matrix.permute(0, 2, 1, 3).reshape(o * ho * wo, c * h * w),
                     None if bias is None else bias.repeat_interleave(ho * wo))
        return y.view(n, o, ho, wo)

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


@contextlib.contextmanager
def direct_convs():
    """Every ``ConvSpec.conv`` as the direct conv inside: FLOP counts (``bench.metrics``) that
    count a conv as a conv whichever way it runs, like the dense layer's; timing the two paths."""
    token = _DIRECT_CONVS.set(True)
    try:
        yield
    finally:
        _DIRECT_CONVS.reset(token)


@functools.lru_cache(maxsize=64)
def _tap_index(h: int, w: int, ho: int, wo: int, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int], pad: tuple[int, int], device: str) -> torch.Tensor:
    """(ho*wo, h*w) indices into a kernel's kh*kw taps plus one zero slot (index kh*kw): the tap
    that joins each output position to each input position of a conv, or the zero slot."""
    def axis(n_in, n_out, k, s, d, p):  # (n_out, n_in) tap along one axis, -1 for none
        offset = torch.arange(n_in)[None, :] + p - s * torch.arange(n_out)[:, None]
        tap = torch.div(offset, d, rounding_mode="floor")
        return torch.where((offset % d == 0) & (tap >= 0) & (tap < k), tap, -1)

    rows = axis(h, ho, kernel[0], stride[0], dilation[0], pad[0])
    cols = axis(w, wo, kernel[1], stride[1], dilation[1], pad[1])
    r, c = rows[:, None, :, None], cols[None, :, None, :]  # (ho, wo, h, w) by broadcasting
    index = torch.where((r >= 0) & (c >= 0), r * kernel[1] + c, kernel[0] * kernel[1])
    return index.reshape(ho * wo, h * w).to(device)


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


class FactorizedLayer(nn.Module):
    """The base of every replacement layer, built-in or plugin.

    A subclass defines ``effective_weight()`` (the dense weight it stands for, shaped like the
    original's) and, so that bias calibration can lift a starved weight term,
    ``weight_factor()`` (a tensor the weight is linear in and that appears once) or its own
    ``scale_weight_``. ``super().__init__(layer)`` takes the original layer's geometry
    (``self.conv``: a ``ConvSpec`` or None; ``self.weight_shape``) and a trainable copy of its
    bias (``self.bias``), and the default ``forward`` applies the effective weight as the
    original layer would. Methods with a cheaper forward (a factor chain) override it.
    ``tnbench_info`` is the layer's metadata for the record."""

    tnbench_info: dict

    def __init__(self, like: nn.Module | None = None):
        super().__init__()
        self.tnbench_info = {}
        if like is not None:
            self.conv = ConvSpec.of(like) if isinstance(like, nn.Conv2d) else None
            self.weight_shape = tuple(like.weight.shape)
            bias = getattr(like, "bias", None)
            self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def effective_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define effective_weight()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        return F.linear(x, w, self.bias) if getattr(self, "conv", None) is None else self.conv.conv(x, w, self.bias)

    def weight_factor(self) -> torch.Tensor | None:
        """A tensor the weight is linear in and that appears once (one factor, one core), so
        that scaling it scales the weight; None where there is none (then override
        ``scale_weight_``)."""
        return None

    @torch.no_grad()
    def scale_weight_(self, factor: float) -> None:
        """Multiply the layer's weight term by ``factor`` (the bias unchanged), adding no parameter."""
        t = self.weight_factor()
        if t is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither weight_factor() nor scale_weight_()")
        t.mul_(factor)
