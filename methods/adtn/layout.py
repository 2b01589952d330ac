"""Which entry of the generated d^Q tensor is which weight: "a real choice with a large effect"
(the team's design card on ADTN, shared/design/ADTN.md, outside this repository).

* ``rowmajor``: the first N entries of the flat d^Q tensor, in the layer's native flattening
  (Linear out x in, Conv2d out x in x kh x kw). When an axis is not a power of d, one site
  then carries bits of two axes (784 = 0b1100010000: output and input bits mix).
* ``padded`` (default): the weight's axes are grouped into consecutive blocks, each block
  padded to a power of d, so that every site belongs to one block; the d^Q tensor is viewed as
  (d^q_1, ..., d^q_k) and cropped to the real block sizes. A Linear whose fan-in is an image
  (C x H x W) gets its fan-in split into those axes (784 -> 1 x 28 x 28 -> 32 x 32). Only a
  grouping with sum q_i == Q qualifies (same Q, hence same parameter count); the finest one
  wins (ties: the earliest cuts, i.e. output, then input channels separated first); when only
  the single block qualifies that is the row-major layout, and the plan says ``rowmajor``.
* ``interleaved``: two blocks, output channels and fan-in (each padded to a power of d), with
  their digits alternating along the sites, most significant first: o_1 i_1 o_2 i_2 ... (the
  longer block's remaining digits last). In both layouts above all output digits come before
  all input digits, and at depth 1 (no activation) a single gate crosses that cut: the matrix
  has rank at most d^2 (a rank-4 bottleneck for d = 2). Deeper, more gates cross it and the
  activations between layers lift a strict bound, but the coupling still passes through a few
  gates at one cut. Interleaved, neighbouring gates couple output and input digits, as tt's paired
  (TT-matrix) layout does: depth 1's first sublayer alone is a Kronecker product of d x d
  matrices, full rank. Same Q, same parameter count; where the two padded blocks would raise
  Q it falls back to row-major. Cost: one permute copy of the d^Q tensor per generation.

Padding entries are never read: the pre-fit loss only sees the real entries (masked).
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch

LAYOUTS = ("padded", "rowmajor", "interleaved")


def ceil_log(n: int, d: int) -> int:
    """Smallest q with d**q >= n."""
    q, size = 0, 1
    while size < n:
        q, size = q + 1, size * d
    return q


@dataclass(frozen=True)
class Layout:
    """``blocks`` (real sizes, product N, row-major over the weight's axes) inside ``padded``
    (d^q_i each, product d^Q); ``shape`` is the weight's shape."""

    kind: str
    shape: tuple[int, ...]
    blocks: tuple[int, ...]
    padded: tuple[int, ...]
    #: interleaved only: ``perm[j]`` = the site holding the j-th digit in block-major order
    perm: tuple[int, ...] | None = None
    local_dim: int = 2

    @property
    def numel(self) -> int:
        return math.prod(self.blocks)

    def read(self, full: torch.Tensor) -> torch.Tensor:
        """The weight (``shape``) from the flat d^Q tensor: a view, a crop (strided slice) and
        one reshape (a copy of the N real entries when the crop is not trivial). Interleaved:
        one gather through a cached index (``_digit_gather``)."""
        if self.kind == "rowmajor":
            return full[: self.numel].view(self.shape)
        if self.perm is not None:
            index, inverse = _digit_gather(self, full.device)
            return _Gather.apply(full, index, inverse).view(self.shape)
        return self._strided_read(full)

    def _strided_read(self, full: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            full = full.view((self.local_dim,) * len(self.perm)).permute(self.perm)
        x = full.reshape(self.padded)
        if self.blocks != self.padded:
            x = x[tuple(slice(0, b) for b in self.blocks)]
        return x.reshape(self.shape)

    def embed(self, weight: torch.Tensor) -> torch.Tensor:
        """The flat d^Q tensor holding ``weight`` at its entries and zeros in the padding."""
        full = weight.new_zeros(math.prod(self.padded))
        if self.kind == "rowmajor":
            full[: self.numel] = weight.reshape(-1)
            return full
        full.view(self.padded)[tuple(slice(0, b) for b in self.blocks)] = weight.reshape(self.blocks)
        if self.perm is not None:  # block-major digits -> site order
            inverse = sorted(range(len(self.perm)), key=self.perm.__getitem__)
            full = full.view((self.local_dim,) * len(self.perm)).permute(inverse).reshape(-1)
        return full

    def mask(self) -> torch.Tensor:
        """Boolean flat d^Q mask of the real entries."""
        return self.embed(torch.ones(self.numel, dtype=torch.float64)) > 0

    def describe(self) -> str:
        text = f"{'x'.join(map(str, self.blocks))} in {'x'.join(map(str, self.padded))}"
        return text + " interleaved" if self.perm is not None else text


class _Gather(torch.autograd.Function):
    """``full[index]`` whose backward is a gather too (``inverse``: the weight entry of each
    flat entry, ``N`` for padding, which reads an appended zero), not index_select's scatter."""

    @staticmethod
    def forward(full: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        return full.index_select(0, index)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return torch.cat([grad.reshape(-1), grad.new_zeros(1)]).index_select(0, inverse), None, None


@functools.lru_cache(maxsize=16)
def _digit_gather(layout: Layout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, inverse) of an interleaved layout, int32: ``index[j]`` is the flat d^Q entry of
    weight entry j. Why: permuting Q axes of size 2 is a strided copy with 2-element runs; on
    the project's CPU it took 0.35 s for Q = 24 against 0.05 s for this gather (one thread,
    /tmp benchmark of 2026-12-05), and ADTN reads its weight at every training step."""
    size = layout.local_dim ** len(layout.perm)
    index = layout._strided_read(torch.arange(size, dtype=torch.int64)).reshape(-1)
    inverse = torch.full((size,), layout.numel, dtype=torch.int64)
    inverse[index] = torch.arange(layout.numel, dtype=torch.int64)
    kind = torch.int32 if size < 2 ** 31 else torch.int64
    return index.to(device=device, dtype=kind), inverse.to(device=device, dtype=kind)


def interleave_perm(digits: tuple[int, ...]) -> tuple[int, ...]:
    """Sites for block-major digits when the blocks' digits alternate (most significant
    first, exhausted blocks drop out): digits (3, 2) -> sites o0 i0 o1 i1 o2, perm (0, 2, 4, 1, 3)."""
    order = [(k, b) for k in range(max(digits)) for b in range(len(digits)) if k < digits[b]]
    site = {digit: s for s, digit in enumerate(order)}
    return tuple(site[(k, b)] for b in range(len(digits)) for k in range(digits[b]))


def interleaved(shape: tuple[int, ...], q: int, d: int) -> Layout:
    """Output | fan-in, padded, digits alternating; row-major where padding would raise Q."""
    blocks = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (shape[0],)
    digits = tuple(ceil_log(b, d) for b in blocks)
    if len(blocks) < 2 or min(blocks) < 2 or sum(digits) != q:
        return rowmajor(shape, q, d)
    return Layout("interleaved", tuple(shape), blocks, tuple(d ** k for k in digits),
                  perm=interleave_perm(digits), local_dim=d)


def rowmajor(shape: tuple[int, ...], q: int, d: int) -> Layout:
    n = math.prod(shape)
    return Layout("rowmajor", tuple(shape), (n,), (d ** q,))


def plan_layout(shape: tuple[int, ...], q: int, d: int, kind: str = "padded",
                axes: tuple[int, ...] | None = None) -> Layout:
    """The layout of a weight of ``shape`` on Q = ``q`` sites of dimension ``d``.

    ``axes``: a finer row-major factorisation of the weight (e.g. (out, C, H, W) for a Linear
    on images); default ``shape``. ``padded`` falls back to row-major when no grouping of
    consecutive axes keeps Q."""
    shape = tuple(int(s) for s in shape)
    if kind not in LAYOUTS:
        raise ValueError(f"adtn layout {kind!r}; valid: {', '.join(LAYOUTS)}")
    axes = tuple(int(a) for a in (axes or shape))
    if math.prod(axes) != math.prod(shape):
        raise ValueError(f"axes {axes} do not factor the weight shape {shape}")
    if kind == "rowmajor":
        return rowmajor(shape, q, d)
    if kind == "interleaved":
        return interleaved(shape, q, d)
    axes = tuple(a for a in axes if a > 1)  # size-1 axes carry no bit
    best = None
    for k in range(len(axes) - 1, 0, -1):  # number of cuts, most first
        for cuts in itertools.combinations(range(1, len(axes)), k):  # lexicographic: earliest first
            bounds = (0, *cuts, len(axes))
            blocks = tuple(math.prod(axes[a:b]) for a, b in zip(bounds, bounds[1:]))
            if sum(ceil_log(b, d) for b in blocks) == q:
                best = blocks
                break
        if best is not None:
            break
    if best is None:
        return rowmajor(shape, q, d)
    return Layout("padded", shape, best, tuple(d ** ceil_log(b, d) for b in best))


def image_axes(in_features: int, input_hw: object) -> tuple[int, int, int] | None:
    """(C, H, W) of a Linear's fan-in, or None. ``input_hw``: (H, W) (used when H*W divides
    the fan-in), 'auto' (a perfect-square fan-in s*s is a 1 x s x s image: 784 -> 28 x 28) or
    None (no split)."""
    if input_hw is None or input_hw == "none":
        return None
    if input_hw == "auto":
        s = math.isqrt(in_features)
        return (1, s, s) if s > 1 and s * s == in_features else None
    h, w = (int(v) for v in input_hw)
    if h < 1 or w < 1 or in_features % (h * w):
        return None
    return in_features // (h * w), h, w
