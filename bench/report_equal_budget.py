"""The equal-budget comparison: every method's accuracy at common parameter counts, each seed
interpolated log-linearly between its own measured points, withheld next to a point that
failed or collapsed, the best marked with its Welch test against the second.

Why a module of its own (issue #22): the interpolation and its rules are one piece, used by
the suite report, the paper and the claims' verdicts.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report_cells import CELL, ci_halfwidth, seed_counts, welch_p
from bench.report_frames import fold_budgets, reference_rows, seed_frames
from bench.report_sizes import record_storage, target_ratios

#: what the comparison holds equal: parameters of the compressed layers, or their storage
#: (``record_storage``: pruned layers also store the positions of their kept weights)
SIZES = ("params", "storage")


def _log_interp(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """y at ``at``, linear in log x between measured points, NaN outside [min x, max x]."""
    order = np.argsort(x)
    lx, y = np.log(x[order]), y[order]
    la = np.log(at)
    out = np.interp(la, lx, y)
    out[(la < lx[0] - 1e-12) | (la > lx[-1] + 1e-12)] = np.nan
    return out


def _common_counts(ranges: list[tuple[float, float]], points: int) -> np.ndarray:
    """A log grid over the hull of where at least two methods' measured ranges overlap."""
    inside = [x for lo, hi in ranges for x in (lo, hi) if sum(a <= x <= b for a, b in ranges) >= 2]
    if not inside:
        return np.array([])
    lo, hi = min(inside), max(inside)
    grid = np.unique(np.round(np.geomspace(lo, hi, points) if hi > lo else [lo]))
    return np.clip(grid, lo, hi)


def _point_state(ok: int, run: int, collapsed: int) -> str:
    """Why a measured point is unfit to interpolate from ("" when it is fit)."""
    states = [f"{run - ok}/{run} failed"] if ok < run else []
    if 0 < collapsed < ok:
        states.append(f"bimodal ({collapsed}/{ok} at chance)")
    elif collapsed and collapsed == ok:
        states.append("at chance")
    return ", ".join(states)


def measured_points(ok: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """Each cell of ``seed_counts`` as a point of its method's curve: ``position`` (mean size,
    ``size_``, over the ok seeds; where every seed failed, the label's dense size / target ratio)
    and ``state`` (``_point_state``)."""
    counts = seed_counts(ok, failed).reset_index()
    measured = ok.groupby(CELL, sort=False).size_.mean()
    dense = ok.groupby(["network", "dataset", "label"], sort=False).params_dense_layers.first()
    keys = list(zip(*(counts[c] for c in CELL)))
    target = target_ratios(counts)
    counts["position"] = [measured.get(k, dense.get(k[:3], np.nan) / t) for k, t in zip(keys, target)]
    counts["state"] = [_point_state(*c) for c in zip(counts.seeds_ok, counts.seeds_run, counts.seeds_collapsed)]
    return counts


def _neighbours(points: pd.DataFrame, n: float) -> pd.DataFrame:
    """The measured points on either side of ``n`` (one, when ``n`` is a measured point)."""
    p = points[np.isfinite(points.position)].sort_values("position")
    below, above = p[p.position <= n * (1 + 1e-9)], p[p.position >= n * (1 - 1e-9)]
    return pd.concat([below.tail(1), above.head(1)]).drop_duplicates(subset="budget")


def equal_budget(df: pd.DataFrame, counts=None, points: int = 8, alpha: float = 0.05,
                 size: str = "params") -> pd.DataFrame:
    """Accuracy of every method at common parameter counts, per (network, dataset): each seed's
    curve is interpolated log-linearly in parameters between its own measured points (never
    extrapolated: NaN where any of the method's seeds lacks a measurement on either side), then
    mean ± CI over the ``seeds`` that have a value (``seeds_run``: those that ran at the
    neighbouring measured points). An interpolation next to a point that failed on some seed,
    collapsed to chance or is bimodal would invent a value no run reached: such a row says why in
    ``flag`` and has no accuracy. A count at a measured point is that point's measurement
    (``seeds_collapsed`` from it, for ``format_cell``), never withheld. ``best`` marks the highest
    mean at a count; ``not_significant`` marks a best whose Welch t-test against the second gives
    p >= ``alpha`` (or cannot be done: under two seeds); bimodal points are not ranked. ``counts``
    overrides the grid. ``size`` (``SIZES``): "storage" compares at equal storage instead; the
    counts stay in the column ``params``."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: expected one of {', '.join(SIZES)}")
    ok, failed = seed_frames(df)
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(size_=[record_storage(r) for r in ok.to_dict("records")] if size == "storage"
                   else ok.params_compressed_layers)
    ok = fold_budgets(ok[~reference_rows(ok)])
    failed = failed[~reference_rows(failed)] if len(failed) else failed
    if ok.empty:
        return pd.DataFrame()
    where = measured_points(ok, failed)
    out = []
    for (net, ds), g in ok.groupby(["network", "dataset"], sort=False):
        curves = {}
        for label, h in g.groupby("label", sort=True):
            per_seed = {s: k.groupby("size_").acc.mean() for s, k in h.groupby("seed")}
            if any(len(c) >= 2 for c in per_seed.values()):
                curves[label] = (h.method.iloc[0], {s: c for s, c in per_seed.items() if len(c) >= 2})
        # a method's range: where every one of its seeds has measurements on both sides
        ranges = [(max(c.index[0] for c in sc.values()), min(c.index[-1] for c in sc.values()))
                  for _, sc in curves.values()]
        ranges = [r for r in ranges if r[0] <= r[1]]
        grid = np.asarray(sorted(counts), dtype=float) if counts is not None else _common_counts(ranges, points)
        if not len(grid):
            continue
        vals = {label: np.array([_log_interp(c.index.to_numpy(float), c.to_numpy(float), grid)
                                 for c in sc.values()]) for label, (_, sc) in curves.items()}
        here = where[(where.network == net) & (where.dataset == ds)]
        for i, n in enumerate(grid):
            rows = [_equal_budget_row(net, ds, n, label, method, vals[label][:, i], here[here.label == label])
                    for label, (method, _) in curves.items()]
            _mark_best(rows, alpha)
            out += rows
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).drop(columns="_values")


def _equal_budget_row(net, ds, n, label, method, v, points) -> dict:
    """One method at one count: its seeds' values, withheld (``flag``) next to an unfit point."""
    v = v[:0] if np.isnan(v).any() else v
    near = _neighbours(points, n) if len(v) else points.iloc[0:0]
    # at a measured point nothing is interpolated: its own measurement, marked as a table marks it
    exact = len(near) == 1 and math.isclose(near.position.iloc[0], n, rel_tol=1e-6)
    flag = "" if exact else "; ".join(f"{p.budget}: {p.state}" for p in near.itertuples() if p.state)
    shown = v[:0] if flag else v
    return {"network": net, "dataset": ds, "params": n, "label": label, "method": method,
            "acc_mean": shown.mean() if len(shown) else np.nan, "acc_ci": ci_halfwidth(shown),
            "seeds": len(v), "seeds_run": int(near.seeds_run.max()) if len(near) else 0,
            "seeds_collapsed": int(near.seeds_collapsed.iloc[0]) if exact else 0, "flag": flag,
            "p_value": np.nan, "best": False, "not_significant": False, "_values": shown}


def _mark_best(rows: list[dict], alpha: float) -> None:
    """``best`` on the highest shown mean, ``not_significant`` when not clearly ahead of the second;
    a bimodal measured point is no one distribution to test, so it is not ranked."""
    one_kind = [r for r in rows if len(r["_values"]) and not 0 < r["seeds_collapsed"] < r["seeds"]]
    ranked = sorted(one_kind, key=lambda r: -r["acc_mean"])
    if ranked:
        ranked[0]["best"] = True
        p = float("nan")
        if len(ranked) > 1:
            p = welch_p(ranked[0]["_values"], ranked[1]["_values"])
        ranked[0]["p_value"] = p
        ranked[0]["not_significant"] = len(ranked) > 1 and not p < alpha
