"""``tt``: tensor-train (TT-matrix / MPO) of the weight; knob = uniform internal TT rank r.

Novikov et al., "Tensorizing Neural Networks" (NeurIPS 2015); Gao et al., "Compressing deep
neural networks by matrix product operators", Phys. Rev. Research 2, 023300 (2020).

Linear (and Conv2d with ``conv_layout="matrix"`` or a 1x1 kernel): the weight is viewed as an
(M x N) matrix, M = out, N = fan_in (conv: in * kh * kw in the kernel's native order). With d
cores (option ``cores``; default ``max(2, round(log(max(M, N)) / log 5))``, i.e. factors of
about 5: 784 x 256 -> 4 cores), M and N are each split into d balanced integer factors
(``balanced_factors``: the largest factor as small as possible; 1s allowed, so 10 ->
5 x 2 x 1 x 1 and a prime p -> p x 1 x ..., which compresses less but needs no padding) and
arranged largest-in-the-middle (784 -> 4 x 7 x 7 x 4). Core k has shape (r_{k-1}, m_k, n_k, r_k),
r_0 = r_d = 1, and W[(i_1..i_d), (j_1..j_d)] = G_1[i_1, j_1] ... G_d[i_d, j_d] (row-major).

Conv2d (default ``conv_layout="kernel"``, kernels larger than 1x1): the TT of the 4-D kernel in
the order (in, kh, kw, out), the layout of tensorly-torch's TT convolution, written as a
TT-matrix with out modes (1, 1, 1, out) and in modes (in, kh, kw, 1). On trained LeNet-5 convs
it fits much better than the balanced matrix layout at equal parameters (conv3 at 4x: 0.54 vs
0.69 relative weight error; ``python -m bench.perf peer_tltorch``), because the channel and spatial
modes keep their own cores. It also runs as four convolutions, 1x1 (in -> r1), kh x 1
(r1 -> r2), 1 x kw (r2 -> r3), 1x1 (r3 -> out), with the original stride/padding/dilation split
over the two spatial ones.

Ranks. Bond k gets r_k = min(r, L_k, R_k), where L_k, R_k are the products of m_j n_j left and
right of the bond: TT-SVD cannot use more. The largest useful r (max_k min(L_k, R_k)) is the
top knob and is lossless; larger requests are clipped to it and the clip recorded.
Initialisation: TT-SVD (``tt_svd``: tensorly's ``tensor_train_matrix``, pytorch backend) in
float64 on the layer's device, cast back. ``nnbcd-tt`` uses this format, size model, module and
``tt_svd`` (its projection step), so the two differ in the training method only.

Forward. Linear: the input is contracted core by core when that costs fewer flops than forming
the dense matrix plus one dense product (checked per call, it depends on the batch); otherwise
the matrix is formed and ``F.linear`` used. Kernel-layout convs likewise choose between the four
small convolutions and the formed kernel by flops for the input's size. Matrix-layout convs form
the kernel (a core-by-core contraction would need an im2col copy kh*kw times the input). The
bias stays dense, added by the last step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import Compressor, FactorizedLayer
from bench.registry import register_method
from bench.layers import ConvSpec, bias_params, check_layer, folded_shape
from methods._tensorize import (as_float64, bias_param, clip_knob, factorized_linear_forward, to_param,
                                tt_modes, with_torch_backend)


def bond_caps(out_modes, in_modes) -> list[int]:
    """Largest useful rank of each internal bond: min(left size, right size)."""
    sizes = [a * b for a, b in zip(out_modes, in_modes)]
    return [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes))]


def bond_ranks(r: int, out_modes, in_modes) -> list[int]:
    return [1] + [min(r, c) for c in bond_caps(out_modes, in_modes)] + [1]


def tt_params(ranks, out_modes, in_modes) -> int:
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(out_modes, in_modes)))


def kernel_modes(layer: nn.Conv2d) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kernel layout: TT over (in, kh, kw, out) as a TT-matrix."""
    out, cin, kh, kw = layer.weight.shape
    return (1, 1, 1, out), (cin, kh, kw, 1)


def tt_svd(weight: torch.Tensor, out_modes, in_modes, ranks) -> list[torch.Tensor]:
    """TT-SVD cores (r_{k-1}, m_k, n_k, r_k) of a weight of M*N elements (row-major (M, N), or
    a conv kernel in its layout), in float64 on its device. One code path for ``tt``'s
    initialisation and NN-BCD's projection, so both build the same format."""
    from tensorly.decomposition import tensor_train_matrix

    w = as_float64(weight).reshape(*out_modes, *in_modes)
    tt = with_torch_backend(tensor_train_matrix, w, list(ranks))
    got = [int(c.shape[0]) for c in tt.factors] + [1]
    if got != list(ranks):  # the size model and TT-SVD must agree on every bond
        raise RuntimeError(f"tt: TT-SVD returned ranks {got}, the size model expected {list(ranks)}")
    return list(tt.factors)


def tt_matrix(cores) -> torch.Tensor:
    """The dense (M x N) matrix of TT-matrix cores (r_{k-1}, m_k, n_k, r_k)."""
    first = cores[0]
    a = first.reshape(first.shape[1], first.shape[2], first.shape[3])
    rows, cols = a.shape[0], a.shape[1]
    for core in cores[1:]:
        _, m, n, r1 = core.shape
        a = torch.einsum("abr,rmns->ambns", a, core)
        rows, cols = rows * m, cols * n
        a = a.reshape(rows, cols, r1)
    return a.reshape(rows, cols)


class TTLayer(FactorizedLayer):
    """A Linear/Conv2d whose folded weight is a TT-matrix with the given cores."""

    def __init__(self, cores: list[torch.Tensor], out_modes, in_modes, bias: nn.Parameter | None,
                 weight_shape: torch.Size, conv: ConvSpec | None, separable: bool, info: dict):
        super().__init__()
        self.cores = nn.ParameterList(cores)
        self.bias = bias
        self.out_modes, self.in_modes = tuple(out_modes), tuple(in_modes)
        self.m, self.n = math.prod(out_modes), math.prod(in_modes)
        self.weight_shape = tuple(weight_shape)
        self.conv, self.separable = conv, separable
        self.tnbench_info = info
        shapes = [tuple(c.shape) for c in cores]
        # flops: forming the matrix (merging cores left to right) and one sample's contraction
        self._form_flops = sum(math.prod(o * i for o, i in zip(out_modes[:k + 1], in_modes[:k + 1]))
                               * shapes[k][0] * shapes[k][3] for k in range(1, len(cores)))
        self._contract_flops = sum(math.prod(out_modes[:k]) * math.prod(in_modes[k + 1:]) * math.prod(s)
                                   for k, s in enumerate(shapes))

    def matrix(self) -> torch.Tensor:
        """The dense (M x N) matrix the cores represent."""
        return tt_matrix(list(self.cores))

    def ranks(self) -> list[int]:
        return [int(c.shape[0]) for c in self.cores] + [1]

    def weight_factor(self) -> torch.Tensor:
        return self.cores[0]

    def effective_weight(self) -> torch.Tensor:
        return self.matrix().reshape(self.weight_shape)

    def contract(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, M) core by core, never forming the matrix."""
        b = x.shape[0]
        t, p, q = x, 1, self.n
        for core in self.cores:
            r0, m, n, r1 = core.shape
            q //= n
            t = torch.einsum("bprnq,rmns->bpmsq", t.reshape(b, p, r0, n, q), core)
            p *= m
        return t.reshape(b, self.m)

    def separable_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Kernel layout: 1x1 (in -> r1), kh x 1 (r1 -> r2), 1 x kw (r2 -> r3), 1x1 (r3 -> out)."""
        c0, c1, c2, c3 = self.cores  # (1,1,in,r1) (r1,1,kh,r2) (r2,1,kw,r3) (r3,out,1,1)
        x = F.conv2d(x, c0[0, 0].t()[:, :, None, None])
        x = self.conv.axis_conv(x, c1[:, 0].permute(2, 0, 1)[:, :, :, None], 0)
        x = self.conv.axis_conv(x, c2[:, 0].permute(2, 0, 1)[:, :, None, :], 1)
        return F.conv2d(x, c3[:, :, 0, 0].t()[:, :, None, None], self.bias)

    def _separable_is_cheaper(self, x: torch.Tensor) -> bool:
        h, w = x.shape[-2:]
        ho, wo = self.conv.out_hw(h, w)
        (_, _, cin, r1), (_, _, kh, r2), (_, _, kw, r3), (_, out, _, _) = (c.shape for c in self.cores)
        steps = h * w * cin * r1 + ho * w * kh * r1 * r2 + ho * wo * kw * r2 * r3 + ho * wo * r3 * out
        return x.shape[0] * steps < self._form_flops + x.shape[0] * ho * wo * out * cin * kh * kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            if self.separable and self._separable_is_cheaper(x):
                return self.separable_conv(x)
            return self.conv.conv(x, self.effective_weight(), self.bias)
        return factorized_linear_forward(self, x)


@register_method("tt")
class TensorTrain(Compressor):
    knob_name = "tt_rank"

    def __init__(self, cores: int | None = None, conv_layout: str = "kernel", **options):
        super().__init__(**options)
        if cores is not None and (not isinstance(cores, int) or cores < 2):
            raise TypeError(f"tt: cores must be an integer >= 2 or None (auto), got {cores!r}")
        if conv_layout not in ("kernel", "matrix"):
            raise TypeError(f"tt: conv_layout must be 'kernel' or 'matrix', got {conv_layout!r}")
        self.cores, self.conv_layout = cores, conv_layout

    def _kernel_layout(self, layer: nn.Module) -> bool:
        return isinstance(layer, nn.Conv2d) and self.conv_layout == "kernel" and math.prod(layer.kernel_size) > 1

    def _modes(self, layer: nn.Module):
        check_layer(layer, "tt")
        if self._kernel_layout(layer):
            return kernel_modes(layer)
        return tt_modes(*folded_shape(layer), self.cores)

    def max_rank(self, layer: nn.Module) -> int:
        return max(bond_caps(*self._modes(layer)), default=1)

    def knobs(self, layer: nn.Module) -> list[int]:
        return list(range(1, self.max_rank(layer) + 1))

    def layer_params(self, layer: nn.Module, knob: int) -> int:
        out_modes, in_modes = self._modes(layer)
        r, _ = clip_knob(knob, self.max_rank(layer), "tt")
        return tt_params(bond_ranks(r, out_modes, in_modes), out_modes, in_modes) + bias_params(layer)

    def factorize(self, layer: nn.Module, knob: int) -> nn.Module:
        out_modes, in_modes = self._modes(layer)
        r, clipped = clip_knob(knob, self.max_rank(layer), "tt")
        ranks = bond_ranks(r, out_modes, in_modes)
        cores = [to_param(c, layer.weight) for c in tt_svd(layer.weight, out_modes, in_modes, ranks)]
        layout = "kernel" if self._kernel_layout(layer) else "matrix"
        info = {"requested": int(knob), "rank": r, "clipped": clipped, "ranks": ranks,
                "out_modes": list(out_modes), "in_modes": list(in_modes), "layout": layout}
        conv = ConvSpec.of(layer) if isinstance(layer, nn.Conv2d) else None
        return TTLayer(cores, out_modes, in_modes, bias_param(layer), layer.weight.shape, conv,
                       layout == "kernel" and conv is not None, info)
