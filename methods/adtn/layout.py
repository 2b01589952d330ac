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

Padding entries are never read: the pre-fit loss only sees the real entries (masked).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

LAYOUTS = ("padded", "rowmajor")


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

    @property
    def numel(self) -> int:
        return math.prod(self.blocks)

    def read(self, full: torch.Tensor) -> torch.Tensor:
        """The weight (``shape``) from the flat d^Q tensor: a view, a crop (strided slice) and
        one reshape (a copy of the N real entries when the crop is not trivial)."""
        if self.kind == "rowmajor":
            return full[: self.numel].view(self.shape)
        x = full.view(self.padded)
        if self.blocks != self.padded:
            x = x[tuple(slice(0, b) for b in self.blocks)]
        return x.reshape(self.shape)

    def embed(self, weight: torch.Tensor) -> torch.Tensor:
        """The flat d^Q tensor holding ``weight`` at its entries and zeros in the padding."""
        full = weight.new_zeros(math.prod(self.padded))
        if self.kind == "rowmajor":
            full[: self.numel] = weight.reshape(-1)
        else:
            full.view(self.padded)[tuple(slice(0, b) for b in self.blocks)] = weight.reshape(self.blocks)
        return full

    def mask(self) -> torch.Tensor:
        """Boolean flat d^Q mask of the real entries."""
        return self.embed(torch.ones(self.numel, dtype=torch.float64)) > 0

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.blocks))} in {'x'.join(map(str, self.padded))}"


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
