"""Shared helpers of the tensor-decomposition baselines (``tt``, ``tucker``, ``cp``).

* how a layer's weight is viewed as a matrix or a higher-order tensor (balanced integer
  factorisations of its dimensions; the two layouts of a Linear weight, below),
* running tensorly decompositions (pytorch backend) on float64 copies of the weight on the
  layer's device, with the backend set only for the duration of the call,
* knob validation and clipping, and the convolution geometry the replacements reproduce.
"""
from __future__ import annotations

import math
import operator
from collections import deque
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init  # factor modules are overwritten: no random init, no RNG use

from bench.layers import CompressionError, balanced_factors  # noqa: F401 - balanced_factors is public in bench.layers


# --- layers ---------------------------------------------------------------------------------
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


def tt_modes(m: int, n: int, cores: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(out modes, in modes) of an (m x n) matrix seen as a d-core TT-matrix: d balanced
    factors per side (1s allowed), organ-pipe ordered; d defaults to factors of about 5."""
    d = cores or max(2, round(math.log(max(m, n, 2)) / math.log(5)))
    return organ_pipe(balanced_factors(m, d)), organ_pipe(balanced_factors(n, d))


# --- the two layouts of a Linear weight ------------------------------------------------------
# "sides": (o_1, ..., o_p, i_1, ..., i_p), tensorly-torch's tensorized layout. Its rank-1 terms
#   are rank-1 matrices, so a Tucker or CP of rank R has matrix rank <= R.
# "paired": (o_1 i_1, ..., o_d i_d), the TT-matrix (MPO) layout of ``tt``. Its rank-1 terms are
#   Kronecker products of small (o_k x i_k) matrices, which can have full matrix rank: CP in it
#   is a sum of R Kronecker products (KCP, Wang et al., "Kronecker CP Decomposition with Fast
#   Multiplication for Compressing RNNs", IEEE TNNLS 2021), rank-1 Tucker or CP is rank-1 TT.
LAYOUTS = ("sides", "paired")


def check_layout(layout: Any, method: str) -> str:
    if layout not in LAYOUTS:
        raise TypeError(f"{method}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def paired_shape(out_modes: Sequence[int], in_modes: Sequence[int]) -> tuple[int, ...]:
    """Mode sizes o_k * i_k of the paired layout, 1s dropped (at least one mode kept)."""
    return tuple(s for s in (o * i for o, i in zip(out_modes, in_modes)) if s > 1) or (1,)


def to_paired(w: torch.Tensor, out_modes: Sequence[int], in_modes: Sequence[int]) -> torch.Tensor:
    """The (m x n) matrix ``w`` as the paired tensor (o_1 i_1, ..., o_d i_d), 1s dropped."""
    d = len(out_modes)
    t = w.reshape(*out_modes, *in_modes).permute(*[j for k in range(d) for j in (k, d + k)])
    return t.reshape(paired_shape(out_modes, in_modes))


def from_paired(t: torch.Tensor, out_modes: Sequence[int], in_modes: Sequence[int]) -> torch.Tensor:
    """Inverse of ``to_paired``: the paired tensor back as the (m x n) matrix."""
    d = len(out_modes)
    t = t.reshape([s for o, i in zip(out_modes, in_modes) for s in (o, i)])
    t = t.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    return t.reshape(math.prod(out_modes), math.prod(in_modes))


def pointwise(cin: int, cout: int, bias: bool, **kw) -> nn.Conv2d:
    return skip_init(nn.Conv2d, cin, cout, 1, bias=bias, **kw)


def flatten_batch(x: torch.Tensor, features: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(x as (B, features), leading shape) so a Linear replacement accepts any (..., in)."""
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, features), lead


#: what a flop of a mode-by-mode contraction costs in flops of a dense matmul: each step moves
#: the whole activation through a small-inner-dimension product (memory-bound), where a GEMM runs
#: near the processor's peak. Measured on one Intel/AMX thread, bf16 autocast, forward + backward
#: (tt, VGG-16's 4096 x 4096 layer, batch 512, ms a step, chain / formed): rank 1 96 / 290, rank 3
#: 243 / 265, rank 6 436 / 256, rank 9 974 / 349; FC-2 fc1 (256 x 784, batch 128) rank 2 4.8 / 2.7.
#: With flops alone the chain ran at rank 9 (2.8x the formed matrix's time).
CHAIN_FLOP_COST = 16


def factorized_linear_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Forward of a factorised Linear (TT, Tucker): contract the input with the factors when
    that costs less for this batch than forming the dense matrix (a contraction flop counted
    ``CHAIN_FLOP_COST`` matmul flops), else form it.

    ``layer`` provides ``n``, ``m``, ``bias``, ``_contract_flops``, ``_form_flops``,
    ``contract(x2)`` and ``matrix()``."""
    x2, lead = flatten_batch(x, layer.n)
    b = x2.shape[0]
    if CHAIN_FLOP_COST * b * layer._contract_flops < layer._form_flops + b * layer.m * layer.n:
        y = layer.contract(x2)
        y = y if layer.bias is None else y + layer.bias
    else:
        y = F.linear(x2, layer.matrix(), layer.bias)
    return y.reshape(*lead, layer.m)
