"""How a method splits its parameter budget across the layers it compresses.

Two rules, an option of every factorisation (``options: {allocation: minmax}``; the default is
``uniform``, so records made before the option existed keep their keys):

* ``uniform``: every layer compressed by about the same ratio (``uniform_ratio``). A small layer
  next to big ones is then cut to rank 1 (LeNet-5's conv2 at 32x).
* ``minmax``: ALDS's rule (Liebenwein et al., NeurIPS 2021) for any method: minimise the largest
  per-layer relative error under the budget, then spend what is left without raising it
  (``allocate_minmax``). The error of a (layer, knob) is the method's ``knob_error``: by default
  the spectral norm of the folded weight's residual over the dense weight's, the criterion ALDS
  uses, so ``svd`` with ``minmax`` is ``alds-svd``'s allocation.

Methods with their own rule (ALDS, global pruning, ADTN's depth fit, NN-BCD) override
``Compressor.allocate`` and take no ``allocation`` option.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from bench.layers import CompressionError, dense_params


def without_allocation(options: dict[str, Any]) -> dict[str, Any]:
    """A method's options less its ``allocation`` rule, which acts only through the knobs it
    picks: what, with the knobs, decides how a layer is compressed (``bench.memo``,
    ``bench.start_store``)."""
    return {k: v for k, v in options.items() if k != "allocation"}


class Sizable(Protocol):
    """What an allocation reads of a method (a ``bench.compressor.Compressor`` is one): its
    knobs, their sizes and their errors. Named here so the allocation rules need not import the
    compressor that offers them."""

    name: str
    knob_error_is_cheap: bool

    def knobs(self, layer: nn.Module) -> Sequence[Any]: ...

    def layer_params(self, layer: nn.Module, knob: Any) -> int: ...

    def knob_error(self, layer: nn.Module, knob: Any) -> float: ...

ALLOCATIONS = ("uniform", "minmax")
#: at most this many knobs per layer are scored for ``minmax`` when scoring means building the
#: replacement (a log-spaced subset by size, the smallest and largest always kept)
MAX_SCORED_KNOBS = 24
#: the min-max rule's version, part of the key of every job that uses it (``Job.config``): rule 2
#: scores the knobs between a pick and the next scored knob up (``MINMAX_REFINE_ROUNDS`` rounds of
#: ``MINMAX_REFINE_KNOBS``), so a pick is not held below its budget by the log-spaced grid (rule 1:
#: FC-2's tt-minmax at 2x took rank 96, 86,784 parameters, where rank 111 fits 100,480 with less error)
MINMAX_RULE = 2
MINMAX_REFINE_ROUNDS = 3
MINMAX_REFINE_KNOBS = 8
#: SVDs of allocation errors in float64 up to this many weights (exact ties), float32 above
FLOAT64_LIMIT = 1 << 22


@dataclass(frozen=True)
class Option:
    """One admissible choice for one layer: its size, its error, the knob that builds it."""

    params: int
    err: float
    knob: Any


def working_copy(w: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``w`` in the precision allocation errors are computed in."""
    w = w.detach()
    return w.double() if w.numel() <= FLOAT64_LIMIT else w.float()


def spectral_error(dense: nn.Module, approx: torch.Tensor) -> float:
    """||W - W_hat||_2 / ||W||_2 of the folded (out x fan_in) weights, in float64."""
    w = dense.weight.detach().double().reshape(dense.weight.shape[0], -1)
    r = w - approx.detach().double().reshape(w.shape)
    norm = torch.linalg.matrix_norm(w, ord=2)
    return float(torch.linalg.matrix_norm(r, ord=2) / norm) if norm > 0 else float(torch.linalg.matrix_norm(r, ord=2))


class _SizeLadder:
    """A layer's knobs with their sizes, read lazily: knobs ascend in size (the compressor
    contract, ``bench.testing``), so finding the largest that fits is a bisection. CP has 262,144
    knobs for VGG-16's classifier.3; sizing them all made a ``--dry-run`` take minutes."""

    def __init__(self, method: Sizable, layer: nn.Module, knobs: Sequence[Any]):
        self.method, self.layer, self.knobs, self._sizes = method, layer, knobs, {}

    def size(self, i: int) -> int:
        if i not in self._sizes:
            self._sizes[i] = self.method.layer_params(self.layer, self.knobs[i])
        return self._sizes[i]

    def largest_within(self, limit: float) -> int:
        """Index of the last knob of size <= ``limit`` (the first knob when none is)."""
        lo, hi = 0, len(self.knobs)  # the first index whose size exceeds limit lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self.size(mid) <= limit:
                lo = mid + 1
            else:
                hi = mid
        return max(lo - 1, 0)


def uniform_ratio(method: Sizable, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, Any]:
    """Knobs whose total parameter count is as close (in log) to dense/target_ratio as the
    grid allows, compressing all layers by about the same ratio.

    Scans a fine log-grid of per-layer ratios; for each, every layer takes its largest knob
    that fits dense/ratio (or its smallest knob when none fits).
    """
    ladders = {}
    for name, layer in layers.items():
        ks = method.knobs(layer)
        if not len(ks):
            raise CompressionError(f"{method.name}: no admissible knob for layer {name}")
        ladders[name] = (_SizeLadder(method, layer, ks), dense_params(layer))
    target = sum(dense for _, dense in ladders.values()) / target_ratio

    def pick(rho: float) -> dict[str, int]:
        return {name: ladder.largest_within(dense / rho) for name, (ladder, dense) in ladders.items()}

    best, best_err = None, math.inf
    for step in range(-400, 401):
        idx = pick(target_ratio * 2.0 ** (step / 40))
        err = abs(math.log(sum(ladders[n][0].size(i) for n, i in idx.items()) / target))
        if err < best_err - 1e-12:
            best, best_err = idx, err
    return {name: ladders[name][0].knobs[i] for name, i in best.items()}


def scored_knobs(knobs: list[Any], sizes: list[int], limit: int = MAX_SCORED_KNOBS) -> list[Any]:
    """At most ``limit`` of ``knobs`` (ordered by size), log-spaced by size, ends kept."""
    if len(knobs) <= limit:
        return list(knobs)
    lo, hi = math.log(max(sizes[0], 1)), math.log(max(sizes[-1], 1))
    picked = {0, len(knobs) - 1}
    for t in range(1, limit - 1):
        goal = lo + (hi - lo) * t / (limit - 1)
        picked.add(min(range(len(knobs)), key=lambda i: abs(math.log(max(sizes[i], 1)) - goal)))
    return [knobs[i] for i in sorted(picked)]


def minmax_error(method: Sizable, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, Any]:
    """ALDS's min-max relative error allocation over ``method``'s knobs, scored by
    ``method.knob_error``. One replacement is built per scored knob: at most ``MAX_SCORED_KNOBS``
    log-spaced ones per layer (``scored_knobs``), then, for each pick, the knobs between it and
    the next scored knob up, a few at a time, until the picks stop moving (``MINMAX_RULE``)."""
    budget = sum(dense_params(layer) for layer in layers.values()) / target_ratio
    knobs, scored = {}, {}  # per layer: its knobs by size; index -> Option of the knobs scored so far

    def score(name: str, i: int) -> None:
        k = knobs[name][i]
        scored[name][i] = Option(method.layer_params(layers[name], k), method.knob_error(layers[name], k), k)

    for name, layer in layers.items():
        knobs[name] = sorted(method.knobs(layer), key=lambda k: method.layer_params(layer, k))
        if not knobs[name]:
            raise CompressionError(f"{method.name}: no admissible knob for layer {name}")
        scored[name] = {}
        sizes = [method.layer_params(layer, k) for k in knobs[name]]
        for i in range(len(sizes)) if method.knob_error_is_cheap else _scored_indices(sizes, MAX_SCORED_KNOBS):
            score(name, i)

    def solve() -> dict[str, Option]:
        return allocate_minmax({n: frontier(list(s.values())) for n, s in scored.items()}, budget)

    picks = solve()
    for _ in range(MINMAX_REFINE_ROUNDS):
        gaps = {}  # per layer, the unscored knobs between its pick and the next scored knob up
        for name, o in picks.items():
            i = next(j for j, opt in scored[name].items() if opt == o)
            up = min((j for j in scored[name] if j > i), default=i + 1)
            gaps[name] = list(range(i + 1, up))
        if not any(gaps.values()):
            break
        for name, gap in gaps.items():
            sizes = [method.layer_params(layers[name], knobs[name][g]) for g in gap]
            for k in _scored_indices(sizes, MINMAX_REFINE_KNOBS):
                score(name, gap[k])
        picks = solve()
    return {name: o.knob for name, o in picks.items()}


def _scored_indices(sizes: list[int], limit: int) -> list[int]:
    """Indices of at most ``limit`` of ``sizes`` (ascending), log-spaced, ends kept (``scored_knobs``)."""
    return scored_knobs(list(range(len(sizes))), sizes, limit)


# --- min-max over Pareto fronts (shared with ALDS) ---------------------------------------------
def frontier(options: list[Option]) -> list[Option]:
    """Pareto front: ascending params, strictly decreasing error."""
    front: list[Option] = []
    for o in sorted(options, key=lambda o: (o.params, o.err)):
        if not front or o.err < front[-1].err:
            front.append(o)
    return front


def _cheapest_within(front: list[Option], eps: float) -> int:
    """Index of the cheapest option with error <= eps (fronts have decreasing errors)."""
    return bisect.bisect_left([-o.err for o in front], -eps)


def _minmax(fronts: dict[str, list[Option]], budget: float) -> tuple[float, dict[str, int]] | None:
    """Smallest threshold whose cheapest choices fit the budget, and those choices. No
    threshold below a layer's smallest error is a candidate: that layer has no choice there."""
    floor = max(f[-1].err for f in fronts.values())
    cands = sorted({o.err for f in fronts.values() for o in f if o.err >= floor})

    def choice(eps: float) -> dict[str, int]:
        return {n: _cheapest_within(f, eps) for n, f in fronts.items()}

    def total(idx: dict[str, int]) -> int:
        return sum(fronts[n][i].params for n, i in idx.items())

    if total(choice(cands[-1])) > budget:
        return None
    lo, hi = 0, len(cands) - 1  # total(cands[hi]) fits; find the first that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if total(choice(cands[mid])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return cands[lo], choice(cands[lo])


def allocate_minmax(fronts: dict[str, list[Option]], budget: float) -> dict[str, Option]:
    """Min-max error allocation that then spends what is left of the budget, choosing from
    the Pareto fronts (``frontier``) only, so no pick is dominated within its layer.

    1. Lexicographic min-max: fix the binding layers at the optimal threshold, re-solve the
       rest with the budget left.
    2. Top-up: the worst layer that can still improve takes its best option that fits.
    3. Packing (``_pack``) over the fronts when it spends more of the budget without raising
       the maximum error.
    """
    chosen: dict[str, Option] = {}
    left, remaining = float(budget), dict(fronts)
    while remaining:
        solved = _minmax(remaining, left)
        if solved is None:  # below the smallest configuration: every free layer at its cheapest
            chosen.update({n: f[0] for n, f in remaining.items()})
            break
        eps, idx = solved
        for n in [n for n, i in idx.items() if remaining[n][i].err == eps]:
            chosen[n] = remaining.pop(n)[idx[n]]
            left -= chosen[n].params
    spent = sum(o.params for o in chosen.values())
    while True:
        ups = []
        for n, o in chosen.items():
            room = budget - spent + o.params
            fits = [c for c in fronts[n] if c.params <= room and c.err < o.err]
            if fits:
                ups.append((o.err, n, min(fits, key=lambda c: (c.err, c.params))))
        if not ups:
            break
        _, n, o = max(ups, key=lambda t: (t[0], t[1]))
        spent += o.params - chosen[n].params
        chosen[n] = o
    packed = _pack(fronts, chosen, budget)
    if packed is not None and sum(o.params for o in packed.values()) > spent:
        return packed
    return chosen


def _pack(fronts: dict[str, list[Option]], chosen: dict[str, Option], budget: float,
          units: int = 4000) -> dict[str, Option] | None:
    """Multiple-choice knapsack: one option per layer from its Pareto front, error at most the
    current maximum, maximising parameters spent, then minimising the summed error. On a front
    more parameters always means less error; over all options it did not (FC-2 at 32x gave
    fc2 (4, 4): 1,194 parameters, error 0.39, where (16, 2) has 842 and 0.27).

    Sizes are rounded up to budget/units, so the result always fits the budget.
    """
    pool = {n: frontier(opts) for n, opts in fronts.items()}  # idempotent on a front

    cap = max(o.err for o in chosen.values())
    q = budget / units
    tie = 1.0 / (len(pool) + 1)  # summed relative errors stay below one parameter
    dp = np.full(units + 1, -np.inf)
    dp[0] = 0.0
    back = []
    for n, opts in pool.items():
        new = np.full(units + 1, -np.inf)
        arg = np.full(units + 1, -1, dtype=np.int64)
        for i, o in enumerate(opts):
            w = int(math.ceil(o.params / q - 1e-9))
            if o.err > cap or w > units:
                continue
            cand = dp[: units + 1 - w] + (o.params - tie * min(o.err, 1.0))
            better = cand > new[w:]
            new[w:][better] = cand[better]
            arg[w:][better] = i
        dp = new
        back.append((n, arg))
    if not np.isfinite(dp).any():
        return None
    c = int(np.argmax(dp))
    out = {}
    for n, arg in reversed(back):
        o = pool[n][int(arg[c])]
        out[n] = o
        c -= int(math.ceil(o.params / q - 1e-9))
    return out
