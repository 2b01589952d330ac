"""``alds`` and ``alds-svd``: Automatic Layer-wise Decomposition Selector.

Liebenwein, Maalouf, Feldman, Rus, "Compressing Neural Networks: Towards Determining the
Optimal Layer-wise Decomposition", NeurIPS 2021.

Per layer, the folded weight W (out x in*kh*kw) is cut along its input channels into k
groups; each group (out x in/k*kh*kw) gets a rank-j truncated SVD. The replacement is a
grouped conv (in -> k*j channels, groups=k, the layer's stride/padding/dilation, no bias)
followed by a 1x1 conv (k*j -> out) that carries the bias; a Linear layer does the same with
a block-diagonal first factor (``einsum`` over the k input slices). Knob = (k, j), or
``"dense"`` for a layer left as it is (a copy).

Per-layer error of (k, j): the largest discarded singular value over the k groups divided by
the spectral norm of W (Eckart-Young-Mirsky applied group by group; it lower-bounds the
spectral error of the whole layer and is within sqrt(k) of it).

Allocation minimises the largest per-layer error across the target layers under the
parameter budget. For a threshold e, each layer takes its cheapest option with error <= e;
the total is non-increasing in e, so bisection over the finite set of attainable errors
gives the smallest feasible e. Budget left over is then spent without raising that maximum:
the binding layers are fixed and the rest re-solved with what remains (lexicographic
min-max), a greedy top-up lowers the worst remaining errors, and a small knapsack over each
layer's Pareto front (size vs error) with error <= e is used when it fills the budget better, so
the achieved size lands as close to the target as the grid allows (the runner records the
achieved ratio anyway). Every step picks from the fronts only, so no layer ever gets an option
that another of its options beats on both size and error (a knapsack over all options did:
spending more parameters is not the aim, lower error is).

``group_error="rss"`` (an option, not the default) scores (k, j) by the root sum of squares
of the groups' largest discarded singular values instead: an upper bound on the layer's
spectral error, where the max is a lower bound that favours many groups.

Choice of k: ``search="exact"`` (default) lets every layer pick (k, j) jointly at each
threshold, which is the exact optimum of the min-max problem. ``search="alternate"`` is an
ALDS-style alternation of ours, not torchprune's implementation (which alternates from random
seeds of k): the rank allocation for fixed k, then per layer the k that minimises its error
within the size it was given, from fixed starting points (all k=1, all k=max) plus
``restarts`` random ones, keeping the best. The exact search is never worse.

``alds-svd`` is the ablation with k = 1 everywhere (plain SVD, error-based allocation).
"""
from __future__ import annotations

import copy
import math
import random
from typing import Any

import torch
from torch import nn

from bench.allocation import Option as _Option, allocate_minmax, frontier as _frontier, working_copy as _work
from bench.compressor import CompressionError, Compressor, FactorizedLayer, dense_params
from bench.layers import check_layer
from bench.options import number
from bench.registry import register_method

DENSE = "dense"
GROUP_ERRORS = ("max", "rss")




def _dims(layer: nn.Module) -> tuple[int, int, int]:
    """(out, in channels, kernel positions kh*kw) of a Linear (kernel 1) or Conv2d."""
    w = layer.weight
    return w.shape[0], w.shape[1], (w[0, 0].numel() if w.dim() == 4 else 1)


def group_blocks(layer: nn.Module, k: int) -> list[torch.Tensor]:
    """The k (out x in/k*kh*kw) matrices of the input-channel groups, in working precision."""
    out, cin, _ = _dims(layer)
    if k < 1 or cin % k:
        raise CompressionError(f"ALDS groups k={k} must divide the {cin} input channels")
    c = cin // k
    w = _work(layer.weight)
    return [w[:, g * c:(g + 1) * c].reshape(out, -1) for g in range(k)]


def candidate_groups(layer: nn.Module, max_groups: int) -> list[int]:
    """Divisors of the input channel count, at most ``max_groups``."""
    _, cin, _ = _dims(layer)
    return [k for k in range(1, min(cin, max_groups) + 1) if cin % k == 0]


def max_rank(layer: nn.Module, k: int) -> int:
    out, cin, s = _dims(layer)
    return min(out, cin // k * s)


def alds_params(layer: nn.Module, k: int, j: int) -> int:
    """k*j*(in/k*kh*kw) + out*k*j (+ bias) = j*(in*kh*kw + k*out) (+ bias)."""
    out, cin, s = _dims(layer)
    return j * (cin * s + k * out) + (out if layer.bias is not None else 0)


def error_table(layer: nn.Module, ks: list[int], combine: str = "max") -> dict[int, torch.Tensor]:
    """For each k: errors[j-1] = max over groups of sigma_{j+1}(group) / ||W||_2, j = 1..max rank
    (the last entry, full rank, is 0). ``combine="rss"`` takes the root sum of squares over
    the groups instead (an upper bound on the spectral error of the whole layer)."""
    check_layer(layer, "alds")
    if combine not in GROUP_ERRORS:
        raise ValueError(f"group error must be one of {GROUP_ERRORS}, got {combine!r}")
    out = layer.weight.shape[0]
    spectral = torch.linalg.svdvals(_work(layer.weight).reshape(out, -1))[0]
    table = {}
    for k in ks:
        m = max_rank(layer, k)
        worst = torch.zeros(m, dtype=spectral.dtype, device=spectral.device)
        s = torch.linalg.svdvals(torch.stack(group_blocks(layer, k)))  # (k, m), batched
        tail = s[:, 1:m]
        worst[: m - 1] = tail.amax(dim=0) if combine == "max" else tail.pow(2).sum(0).sqrt()
        table[k] = (worst / spectral if spectral > 0 else worst).cpu()
    return table


class GroupedLowRankLayer(FactorizedLayer):
    """Block-diagonal first factor (k groups of rank j) then a dense 1x1 mix carrying the bias."""

    def __init__(self, layer: nn.Module, k: int, j: int):
        super().__init__()
        check_layer(layer, "alds")
        out, cin, s = _dims(layer)
        c, r = cin // k, k * j
        self.k, self.j, self.out_shape = k, j, tuple(layer.weight.shape)
        self.is_linear = isinstance(layer, nn.Linear)
        w = layer.weight
        kw = dict(device=w.device, dtype=w.dtype)
        has_bias = layer.bias is not None
        firsts, seconds, dropped = [], [], []
        for block in group_blocks(layer, k):
            u, sv, vh = torch.linalg.svd(block, full_matrices=False)
            dropped.append(float(sv[j]) if j < len(sv) else 0.0)
            root = sv[:j].sqrt()
            seconds.append(u[:, :j] * root)
            firsts.append(root[:, None] * vh[:j])
        a = torch.cat(seconds, dim=1).to(w.dtype)   # (out, k*j)
        b = torch.cat(firsts, dim=0).to(w.dtype)    # (k*j, c*s), group g in rows g*j..
        if self.is_linear:
            self.first = nn.Parameter(b.reshape(k, j, c).contiguous())
            self.second = nn.Linear(r, out, bias=has_bias, **kw)
            self.second.weight.data.copy_(a)
        else:
            self.first = nn.Conv2d(cin, r, layer.kernel_size, stride=layer.stride,
                                   padding=layer.padding, dilation=layer.dilation, groups=k,
                                   bias=False, padding_mode=layer.padding_mode, **kw)
            self.first.weight.data.copy_(b.reshape(self.first.weight.shape))
            self.second = nn.Conv2d(r, out, 1, bias=has_bias, **kw)
            self.second.weight.data.copy_(a.reshape(self.second.weight.shape))
        if has_bias:
            self.second.bias.data.copy_(layer.bias.detach())
        spectral = float(torch.linalg.matrix_norm(_work(w).reshape(out, -1), ord=2))
        scale = 1.0 / spectral if spectral else 0.0
        self.tnbench_info = {"groups": k, "rank": j, "rel_error": max(dropped) * scale,
                             "rel_error_rss": math.sqrt(sum(d * d for d in dropped)) * scale}

    @property
    def bias(self) -> torch.Tensor | None:
        """The output bias (held by the 1x1 mix): what bias calibration shifts."""
        return self.second.bias

    def _first_matrix(self) -> torch.Tensor:
        """(k*j, in/k*kh*kw): row block g is group g's right factor."""
        w = self.first if self.is_linear else self.first.weight
        return w.reshape(self.k * self.j, -1)

    def weight_factor(self) -> torch.Tensor:
        return self.first if self.is_linear else self.first.weight

    def effective_weight(self) -> torch.Tensor:
        out = self.out_shape[0]
        a = self.second.weight.reshape(out, self.k, self.j)
        b = self._first_matrix().reshape(self.k, self.j, -1)
        blocks = torch.einsum("okj,kjc->okc", a, b)            # (out, k, c*s)
        return blocks.reshape(self.out_shape)  # group-major input order == channel order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_linear:
            return self.second(self.first(x))
        lead = x.shape[:-1]
        z = torch.einsum("nkc,kjc->nkj", x.reshape(-1, self.k, x.shape[-1] // self.k), self.first)
        return self.second(z.reshape(*lead, self.k * self.j))


def _score(chosen: dict[str, _Option], budget: float) -> tuple[float, float, float]:
    """Lower is better: budget overshoot first (a start whose cheapest choice does not fit
    must never win on error), then the maximum error, then the summed error."""
    errs = [o.err for o in chosen.values()]
    return max(0.0, sum(o.params for o in chosen.values()) - budget), max(errs), sum(errs)


def _knob(knob: Any) -> Any:
    if isinstance(knob, str):
        if knob != DENSE:
            raise CompressionError(f"ALDS knob must be (k, j) or {DENSE!r}, got {knob!r}")
        return DENSE
    try:
        k, j = (int(v) for v in knob)
    except (TypeError, ValueError):
        raise CompressionError(f"ALDS knob must be (k, j) or {DENSE!r}, got {knob!r}") from None
    return k, j


class _ALDSBase(Compressor):
    knob_name = "(groups, rank)"
    allocation_uses_weights = True

    def __init__(self, max_groups: int = 16, search: str = "exact", restarts: int = 3,
                 seed: int = 0, group_error: str = "max", **options: Any):
        super().__init__(**options)
        if group_error not in GROUP_ERRORS:
            raise ValueError(f"group_error must be one of {GROUP_ERRORS}, got {group_error!r}")
        self.group_error = group_error
        if search not in ("exact", "alternate"):
            raise ValueError(f"search must be 'exact' or 'alternate', got {search!r}")
        self.max_groups = number("alds", "max_groups", max_groups, integer=True, lo=1, hi=4096)
        self.search = search
        self.restarts = number("alds", "restarts", restarts, integer=True, lo=1, hi=1000)
        self.seed = number("alds", "seed", seed, integer=True, lo=0, hi=2**32 - 1)

    def groups(self, layer: nn.Module) -> list[int]:
        return candidate_groups(layer, self.max_groups)

    # --- size model ---------------------------------------------------------------------
    def knobs(self, layer: nn.Module) -> list[Any]:
        """Every (k, j) smaller than the dense layer, by size, then ``"dense"``."""
        check_layer(layer, "alds")
        dense = dense_params(layer)
        opts = [(alds_params(layer, k, j), k, j) for k in self.groups(layer)
                for j in range(1, max_rank(layer, k) + 1) if alds_params(layer, k, j) < dense]
        return [(k, j) for _, k, j in sorted(opts)] + [DENSE]

    def layer_params(self, layer: nn.Module, knob: Any) -> int:
        check_layer(layer, "alds")
        knob = _knob(knob)
        return dense_params(layer) if knob == DENSE else alds_params(layer, *knob)

    def factorize(self, layer: nn.Module, knob: Any) -> nn.Module:
        check_layer(layer, "alds")
        knob = _knob(knob)
        if knob == DENSE:
            new = copy.deepcopy(layer)
            new.tnbench_info = {"dense": True, "groups": 0, "rank": 0, "rel_error": 0.0}
            return new
        k, j = knob
        _, cin, _ = _dims(layer)
        if k < 1 or cin % k:
            raise CompressionError(f"ALDS groups k={k} must divide the {cin} input channels")
        if not 1 <= j <= max_rank(layer, k):
            raise CompressionError(f"ALDS rank j={j} outside 1..{max_rank(layer, k)} for k={k} in {layer}")
        return GroupedLowRankLayer(layer, k, j)

    # --- budget -> knobs ------------------------------------------------------------------
    def options(self, layer: nn.Module) -> dict[int, list[_Option]]:
        """Per k: every (k, j) smaller than dense with its error, plus the dense option."""
        dense = dense_params(layer)
        table = error_table(layer, self.groups(layer), self.group_error)
        out = {}
        for k, errs in table.items():
            opts = [_Option(alds_params(layer, k, j), float(errs[j - 1]), (k, j))
                    for j in range(1, len(errs) + 1) if alds_params(layer, k, j) < dense]
            out[k] = opts + [_Option(dense, 0.0, DENSE)]
        return out

    def allocate(self, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, Any]:
        if target_ratio <= 0:
            raise CompressionError(f"target ratio must be positive, got {target_ratio}")
        for layer in layers.values():
            check_layer(layer, "alds")
        budget = sum(dense_params(l) for l in layers.values()) / target_ratio
        per_k = {n: self.options(l) for n, l in layers.items()}
        if self.search == "exact":
            pool = {n: [o for opts in by_k.values() for o in opts[:-1]] + [by_k[1][-1]]
                    for n, by_k in per_k.items()}
            fronts = {n: _frontier(opts) for n, opts in pool.items()}
            return {n: o.knob for n, o in allocate_minmax(fronts, budget).items()}
        return self._alternate(per_k, budget)

    def _alternate(self, per_k: dict[str, dict[int, list[_Option]]], budget: float) -> dict[str, Any]:
        """ALDS-style alternation (not torchprune's seeded one): ranks for fixed k, then per
        layer the k with the lowest error within the size it was given; from all-k=1, all-k=max
        and ``restarts`` random starts, keep the best."""
        full = {n: _frontier([o for opts in by_k.values() for o in opts]) for n, by_k in per_k.items()}
        rng = random.Random(self.seed)
        starts = [{n: min(by_k) for n, by_k in per_k.items()},
                  {n: max(by_k) for n, by_k in per_k.items()}]
        starts += [{n: rng.choice(sorted(by_k)) for n, by_k in per_k.items()} for _ in range(self.restarts)]
        best, best_score = None, None
        for ks in starts:
            seen = []
            while ks not in seen and len(seen) < 20:
                seen.append(ks)
                picked = allocate_minmax({n: _frontier(per_k[n][k]) for n, k in ks.items()}, budget)
                score = _score(picked, budget)
                if best_score is None or score < best_score:
                    best, best_score = picked, score
                new_ks = {}
                for n, o in picked.items():
                    knob = _best_within(full[n], o).knob
                    new_ks[n] = knob[0] if knob != DENSE else ks[n]
                ks = new_ks
        # a fixed k can leave a pick that another k beats on size and error: take, per layer,
        # the best option of its full front within the size it got (size and max error never rise)
        return {n: _best_within(full[n], o).knob for n, o in best.items()}


def _best_within(front: list[_Option], o: _Option) -> _Option:
    """The lowest-error (then smallest) option of ``front`` and ``o`` no larger than ``o``."""
    return min([c for c in front if c.params <= o.params] + [o], key=lambda c: (c.err, c.params))


@register_method("alds")
class ALDS(_ALDSBase):
    pass


@register_method("alds-svd")
class ALDSSVD(_ALDSBase):
    """The k = 1 ablation: plain truncated SVD with ALDS's min-max error allocation."""

    def __init__(self, **options: Any):
        if "max_groups" in options:
            raise TypeError("alds-svd fixes k = 1; it takes no max_groups option")
        super().__init__(max_groups=1, **options)
