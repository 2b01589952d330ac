"""Report data: frames and strings computed from a suite's records, never files or figures
(those are in ``plots/``, which imports this module; this module never imports ``plots``)."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.records import latest_by_key, read_records
from bench.registry import is_reference

#: what ``format_acc``'s strings mean (mean ± CI of whatever values it is given)
ACC_NOTE = "mean ± 95 % CI half-width over seeds (Student t; one seed: the mean only)"
UNKNOWN_BASELINE = "unknown"

#: a seed whose accuracy is within this many points of chance (100 / classes) has collapsed.
#: A network that predicts one class scores that class's share of the test set: on MNIST up to
#: 11.35 % (the digit 1), 1.35 points above chance, so a 1-point margin would miss it.
CHANCE_MARGIN = 1.5
#: a cell's mean ± CI needs this many ok seeds (and no failed one, and not bimodal)
MIN_CI_SEEDS = 3
#: an achieved ratio further than this (relative) from its target ratio is marked †size
SIZE_TOLERANCE = 0.10
SIZE_MARK = "†size"
#: bits of one stored value and of one CSR-like index; storage is counted in stored values
VALUE_BITS = INDEX_BITS = 32
SPARSE_COUNT = "non-zero weights"           # ``params_counted_as`` of pruning methods
SPARSE_METHODS = frozenset({"prune", "nnbcd-prune"})
CELL = ["network", "dataset", "label", "budget"]

#: what ``format_cell``'s strings (the ``accuracy`` column of ``accuracy_summary``) mean
SEED_RULE = (f"mean ± 95 % CI half-width over seeds (Student t), given only when {MIN_CI_SEEDS} or more seeds "
             "ran ok and none failed; otherwise \"k/n ok: mean\": k of the n seeds that ran ended ok (a failed "
             "seed: status failed or a non-finite accuracy), the mean of those k, no CI. \"‡ bimodal: c/k at "
             f"chance\": c of the k ok seeds ended within {CHANCE_MARGIN:g} points of chance (100/classes) and the "
             "others did not: the mean of two kinds of run, no CI; \"‡ at chance\": every ok seed did")


def records_frame(path: Path, keys: set[str] | None = None, all_baselines: bool = False) -> pd.DataFrame:
    """Latest record per job key, as a frame in file order; with ``keys``, only those jobs (a
    suite's current jobs, so records of an edited suite's old configurations stay out). Records
    of an older dense baseline are left out unless ``all_baselines`` (see ``baseline_split``)."""
    records = read_records(path)
    latest = latest_by_key(records)
    position = {r["key"]: i for i, r in enumerate(records) if isinstance(r, dict) and r.get("key") in latest}
    rows = sorted((r for k, r in latest.items() if keys is None or k in keys), key=lambda r: position[r["key"]])
    frame = pd.DataFrame(rows)
    if len(frame) and "options" in frame:
        # one label must mean one configuration: set apart rows of other option sets
        opts = frame.options.map(lambda o: ",".join(f"{k}={v}" for k, v in sorted(o.items()))
                                 if isinstance(o, dict) else "")
        for label, idx in frame.groupby("label").groups.items():
            if opts[idx].nunique() > 1:
                frame.loc[idx, "label"] = [f"{label} [{o}]" for o in opts[idx]]
    return frame if all_baselines else baseline_split(frame)[0]


def baseline_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, left out): measurements of one (network, dataset, seed) must come from one dense
    baseline, the one of its latest ``ok`` record (frame order = file order). Records without a
    ``baseline_fingerprint`` count as one unknown fingerprint; records not ``ok`` carry no
    measurement and are always kept."""
    if df.empty or "network" not in df:
        return df, df.iloc[0:0]
    fp = (df["baseline_fingerprint"] if "baseline_fingerprint" in df else pd.Series(index=df.index, dtype=object))
    fp = fp.where(fp.notna(), UNKNOWN_BASELINE).astype(str)
    ok = df.status == "ok"
    drop = pd.Series(False, index=df.index)
    for _, idx in df[ok].groupby(["network", "dataset", "seed"], sort=False).groups.items():
        current = fp[idx[-1]]
        drop[idx] = fp[idx] != current
    return df[~drop], df[drop]


def budget_order(b: str) -> float:
    try:
        return float(b[1:]) if b.startswith("x") else 1e12 + float(b.split("=", 1)[1])
    except ValueError:
        return math.inf


def ci_halfwidth(values) -> float:
    """Half-width of the 95 % Student-t confidence interval of the mean; NaN below two values."""
    x = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def _knobs_id(r) -> str | None:
    knobs = r.get("knobs")
    if not isinstance(knobs, dict):
        return None
    return json.dumps(knobs, sort_keys=True, default=str) + f"|{r.get('params_compressed_layers')}"


def fold_budgets(ok: pd.DataFrame) -> pd.DataFrame:
    """Budgets that give the same allocation as a smaller budget (``same_as`` records, or the
    same knobs and parameters on every seed) are one measurement: keep the smallest budget's rows,
    drop the others, and list the folded budgets in a ``folded`` column ("" when none)."""
    if ok.empty:
        return ok.assign(folded="")
    ok = ok.copy()
    ok["folded"] = ""
    parent = {k: k for k in ok.key}

    def find(k):
        while parent[k] != k:
            k = parent[k]
        return k

    for _, g in ok.groupby(["network", "dataset", "label", "seed"], sort=False):
        rows = g.to_dict("records")
        by_id: dict[str, str] = {}
        for r in rows:
            ref = r.get("same_as")
            if isinstance(ref, str) and ref in parent:
                parent[find(r["key"])] = find(ref)
            kid = _knobs_id(r)
            if kid is not None:
                if kid in by_id:
                    parent[find(r["key"])] = find(by_id[kid])
                else:
                    by_id[kid] = r["key"]
    ok["_alloc"] = ok.key.map(find)
    keep = pd.Series(True, index=ok.index)
    for _, g in ok.groupby(["network", "dataset", "label"], sort=False):
        sig = {b: tuple(sorted(zip(h.seed, h._alloc))) for b, h in g.groupby("budget")}
        seen: dict[tuple, str] = {}
        for b in sorted(sig, key=budget_order):
            if sig[b] in seen:
                keep[g.index[g.budget == b]] = False
                first = g.index[g.budget == seen[sig[b]]]
                ok.loc[first, "folded"] = [", ".join(filter(None, [f, b])) for f in ok.loc[first, "folded"]]
            else:
                seen[sig[b]] = b
    return ok[keep].drop(columns="_alloc")


def reference_rows(df: pd.DataFrame) -> pd.Series:
    """Boolean mask of ``df``'s reference rows (dense, ``bench.registry.is_reference``): the
    row the methods are measured against, kept out of their rankings and curves."""
    return df.method.map(is_reference).astype(bool)


def _seed_frames(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ok, failed) records, each with ``acc`` (dense: its baseline's). A seed that ran but gave
    no accuracy (status failed, or ok with a non-finite one) is failed: it must be counted, not
    dropped. Skipped jobs never ran and in-flight ones have not finished: neither."""
    if df.empty or "status" not in df:
        return pd.DataFrame(), pd.DataFrame()
    ran = df[df.status.isin(["ok", "failed"])].copy()
    nan = pd.Series(np.nan, index=ran.index)
    after = pd.to_numeric(ran.get("acc_after_finetune", nan), errors="coerce")
    dense = pd.to_numeric(ran.get("acc_dense", nan), errors="coerce")
    ran["acc"] = after.where(~reference_rows(ran), dense)
    good = (ran.status == "ok") & np.isfinite(ran.acc)
    return ran[good], ran[~good]


def _ok_with_acc(df: pd.DataFrame) -> pd.DataFrame:
    return _seed_frames(df)[0]


@functools.lru_cache(maxsize=None)
def chance_accuracy(dataset: str) -> float:
    """100 / classes (%) of a registered dataset; NaN for one the registry does not know (its
    seeds are then never called collapsed)."""
    from bench.registry import UnknownNameError, dataset_spec  # loads the dataset modules: only when asked

    try:
        return 100.0 / dataset_spec(dataset).classes
    except (UnknownNameError, ImportError):
        return float("nan")


def collapsed_seeds(ok: pd.DataFrame) -> pd.Series:
    """Whether each record's accuracy is within ``CHANCE_MARGIN`` points of chance."""
    chance = ok.dataset.map(chance_accuracy).astype(float)
    return (ok.acc - chance).abs() <= CHANCE_MARGIN


def _fold_map(ok: pd.DataFrame) -> dict[tuple, str]:
    """(network, dataset, label, folded budget) -> the budget it is shown at (``fold_budgets``)."""
    return {(r.network, r.dataset, r.label, b.strip()): r.budget
            for r in ok[CELL + ["folded"]].drop_duplicates().itertuples() for b in r.folded.split(",") if b.strip()}


def seed_counts(ok: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """Per cell (network, dataset, label, budget; ``ok`` folded): ``seeds_ok``, ``seeds_run``
    (ok + failed; a failed seed of a folded budget counts where that budget is shown) and
    ``seeds_collapsed``. Cells where every seed failed are included (``seeds_ok`` 0)."""
    fold = _fold_map(ok)
    lost = failed[CELL + ["seed"]].copy() if len(failed) else pd.DataFrame(columns=CELL + ["seed"])
    lost["budget"] = [fold.get((n, d, lab, b), b) for n, d, lab, b in zip(lost.network, lost.dataset, lost.label,
                                                                          lost.budget)]
    good = ok.assign(collapsed=collapsed_seeds(ok))
    run = pd.concat([good[CELL + ["seed"]], lost]).groupby(CELL, sort=False).seed.nunique().rename("seeds_run")
    counts = good.groupby(CELL, sort=False).agg(seeds_ok=("seed", "nunique"), seeds_collapsed=("collapsed", "sum"))
    out = pd.concat([counts, run], axis=1)
    return out.fillna({"seeds_ok": 0, "seeds_collapsed": 0}).astype(int)


def ci_shown(ok: int, run: int, collapsed: int) -> bool:
    """The one rule for a mean ± CI: enough ok seeds, none failed, one kind of run (not bimodal)."""
    return ok >= MIN_CI_SEEDS and ok == run and not 0 < collapsed < ok


def format_cell(mean: float, ci: float, ok: int, run: int, collapsed: int = 0) -> str:
    """A table entry by ``SEED_RULE``: "93.10 ± 1.20", "2/3 ok: 93.10", "... ‡ bimodal: 1/3 at
    chance", "... ‡ at chance", or "0/3 ok" when no seed gave an accuracy."""
    if ok == 0:
        return f"0/{run} ok"
    text = format_acc(mean, ci if ci_shown(ok, run, collapsed) else float("nan"))
    if ok < run or ok < MIN_CI_SEEDS:
        text = f"{ok}/{run} ok: {text}"
    if 0 < collapsed < ok:
        text += f" ‡ bimodal: {collapsed}/{ok} at chance"
    elif collapsed and collapsed == ok:
        text += " ‡ at chance"
    return text


def layer_storage(info: dict) -> float:
    """What one pruned layer takes to store, in 32-bit values: its values (kept weights and the
    dense biases) plus the positions of the kept weights, at the cheaper of a bitmask (one bit per
    dense weight) and a CSR-like list (one 32-bit index per kept weight). ``info``: a record's
    ``layer_info`` entry (``params``, ``params_dense``; ``total`` = dense weights, else all of
    ``params_dense`` are taken as weights)."""
    dense_weights = info.get("total", info["params_dense"])
    kept = info["params"] - (info["params_dense"] - dense_weights)
    return info["params"] + min(dense_weights, INDEX_BITS * kept) / VALUE_BITS


def is_sparse(r: dict) -> bool:
    """Whether a record counts non-zero weights (pruning), whose positions must be stored too."""
    return r.get("params_counted_as") == SPARSE_COUNT or r.get("method") in SPARSE_METHODS


def record_storage(r: dict) -> float:
    """Storage of a record's compressed layers in 32-bit values: its parameters for a
    factorisation, values + index (``layer_storage``) per pruned layer; without ``layer_info``,
    the compressed layers taken as one layer."""
    params = float(r.get("params_compressed_layers", np.nan))
    if not is_sparse(r):
        return params
    layers = r.get("layer_info")
    if not isinstance(layers, dict) or not layers:
        layers = {"all": {"params": params, "params_dense": float(r.get("params_dense_layers", np.nan))}}
    return float(sum(layer_storage(info) for info in layers.values()))


def target_ratios(frame: pd.DataFrame) -> pd.Series:
    """Each record's target compression ratio: ``target_ratio``, else read from an "xN" budget."""
    from_budget = frame.budget.map(lambda b: budget_order(b) if str(b).startswith("x") else np.nan)
    if "target_ratio" not in frame:
        return from_budget.astype(float)
    return pd.to_numeric(frame.target_ratio, errors="coerce").fillna(from_budget).astype(float)


def accuracy_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, dataset, label, budget) with an ok seed: accuracy mean, std and 95 %
    CI half-width over the ok seeds, params (achieved) and ``storage`` (``record_storage``), seed
    counts (``seed_counts``; ``seeds`` = ``seeds_ok``), ``bimodal``, ``ci_shown``, ``size_off``
    (achieved ratio more than ``SIZE_TOLERANCE`` off the target) and ``accuracy``, the entry by
    ``SEED_RULE``; saturated budgets folded into the smallest (``folded``). Cells where every seed
    failed have no row (nothing was measured); their records stay among the jobs not ok."""
    ok, failed = _seed_frames(df)
    if ok.empty:
        return pd.DataFrame()
    ok = fold_budgets(ok)
    ok = ok.assign(storage=[record_storage(r) for r in ok.to_dict("records")], target_ratio=target_ratios(ok))
    g = ok.groupby(["network", "dataset", "label", "method", "budget"], sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), acc_ci=("acc", ci_halfwidth),
                acc_before=("acc_before_finetune", "mean"),
                params=("params_compressed_layers", "mean"), params_dense=("params_dense_layers", "first"),
                storage=("storage", "mean"), ratio=("achieved_ratio", "mean"), target_ratio=("target_ratio", "first"),
                fit=("fit_rel_error", "mean"), seeds=("seed", "nunique"),
                flops=("flops", "mean"), folded=("folded", "first")).reset_index()
    out = out.join(seed_counts(ok, failed), on=CELL)
    out["bimodal"] = (out.seeds_collapsed > 0) & (out.seeds_collapsed < out.seeds_ok)
    out["ci_shown"] = [ci_shown(*c) for c in zip(out.seeds_ok, out.seeds_run, out.seeds_collapsed)]
    out["size_off"] = (out.ratio / out.target_ratio - 1).abs() > SIZE_TOLERANCE
    out["accuracy"] = [format_cell(*c) for c in zip(out.acc_mean, out.acc_ci, out.seeds_ok, out.seeds_run,
                                                     out.seeds_collapsed)]
    out["order"] = out.budget.map(budget_order)
    return out.sort_values(["network", "dataset", "method", "label", "order"]).drop(columns="order")


def ratio_text(ratio: float, off: bool) -> str:
    """An achieved ratio as a table shows it, marked ``SIZE_MARK`` when off its target."""
    return f"{ratio:.1f}x" + (f" {SIZE_MARK}" if off else "")


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One (network, dataset)'s rows of ``accuracy_summary`` as table.md shows them: achieved size
    and ratio (``SIZE_MARK`` when off target), storage, accuracy by ``SEED_RULE``, ok/run seeds."""
    s = summary
    return pd.DataFrame({
        "method": s.label, "budget": s.budget, "params": s.params.round().astype(int),
        "ratio": [ratio_text(r, off) for r, off in zip(s.ratio, s.size_off)],
        "storage (values + index)": s.storage.round().astype(int),
        "acc before ft": s.acc_before.map(lambda a: "" if a != a else f"{a:.2f}"),
        "accuracy (95 % CI)": s.accuracy,
        "fit error": s.fit.map(lambda f: "" if f != f else f"{f:.3g}"),
        "seeds (ok/run)": [f"{k}/{n}" for k, n in zip(s.seeds_ok, s.seeds_run)],
        "same as": s.folded})


#: what the columns of ``accuracy_table`` mean
TABLE_NOTE = (f"Accuracy is test accuracy (%) after fine-tuning: {SEED_RULE}. Params: parameters of the compressed "
              "layers, achieved (mean over ok seeds; pruning counts non-zero weights), with the achieved ratio, "
              f"marked {SIZE_MARK} when it is more than {SIZE_TOLERANCE:.0%} off the budget's target ratio. Storage "
              f"(values + index): the same in {VALUE_BITS}-bit values, plus for pruned layers the positions of the "
              f"kept weights (the cheaper of a 1-bit-per-weight mask and a {INDEX_BITS}-bit index per kept weight).")


def fit_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, dataset, layer, label, budget, knob): fit error mean over the seeds
    with a finite one (``seeds``), params, ``storage`` (``layer_storage`` for pruned layers), and
    ``seeds_run``: the seeds of that (network, dataset, label, budget) that ran (ok + failed)."""
    if df.empty or "status" not in df:
        return pd.DataFrame()
    rows = []
    for r in df[df.status == "ok"].to_dict("records"):
        layers = r.get("layer_info")
        for layer, info in (layers if isinstance(layers, dict) else {}).items():
            fit = float(info["fit_rel_error"]) if info.get("fit_rel_error") is not None else np.nan
            rows.append({"network": r["network"], "dataset": r["dataset"], "layer": layer, "label": r["label"],
                         "method": r["method"], "budget": r["budget"], "params": info["params"],
                         "params_dense": info["params_dense"],
                         "storage": layer_storage(info) if is_sparse(r) else float(info["params"]),
                         "fit": fit, "knob": str(info["knob"]), "seed_ok": r["seed"] if np.isfinite(fit) else np.nan})
    if not rows:
        return pd.DataFrame()
    f = pd.DataFrame(rows)
    ran = df[df.status.isin(["ok", "failed"])].groupby(CELL, sort=False).seed.nunique().rename("seeds_run")
    out = (f.groupby(["network", "dataset", "layer", "label", "method", "budget", "knob"], sort=False)
            .agg(params=("params", "mean"), params_dense=("params_dense", "first"), storage=("storage", "mean"),
                 fit_mean=("fit", "mean"), fit_std=("fit", "std"), seeds=("seed_ok", "nunique")).reset_index())
    return out.join(ran, on=CELL)


def format_acc(mean: float, ci: float) -> str:
    """``mean ± ci`` with two decimals, the mean alone when the CI is undefined (one seed)."""
    return f"{mean:.2f} ± {ci:.2f}" if ci == ci else f"{mean:.2f}"


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


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value; NaN under two values a side; with no spread on either
    side, 0 if the means differ else 1 (scipy would return NaN)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _point_state(ok: int, run: int, collapsed: int) -> str:
    """Why a measured point is unfit to interpolate from ("" when it is fit)."""
    states = [f"{run - ok}/{run} failed"] if ok < run else []
    if 0 < collapsed < ok:
        states.append(f"bimodal ({collapsed}/{ok} at chance)")
    elif collapsed and collapsed == ok:
        states.append("at chance")
    return ", ".join(states)


def measured_points(ok: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """Each cell of ``seed_counts`` as a point of its method's curve: ``position`` (mean params
    over the ok seeds; where every seed failed, the label's dense size / target ratio) and
    ``state`` (``_point_state``)."""
    counts = seed_counts(ok, failed).reset_index()
    measured = ok.groupby(CELL, sort=False).params_compressed_layers.mean()
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


def equal_budget(df: pd.DataFrame, counts=None, points: int = 8, alpha: float = 0.05) -> pd.DataFrame:
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
    overrides the grid."""
    ok, failed = _seed_frames(df)
    if ok.empty:
        return pd.DataFrame()
    ok = fold_budgets(ok[~reference_rows(ok)])
    failed = failed[~reference_rows(failed)] if len(failed) else failed
    if ok.empty:
        return pd.DataFrame()
    where = measured_points(ok, failed)
    out = []
    for (net, ds), g in ok.groupby(["network", "dataset"], sort=False):
        curves = {}
        for label, h in g.groupby("label", sort=True):
            per_seed = {s: k.groupby("params_compressed_layers").acc.mean() for s, k in h.groupby("seed")}
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


def finetune_epochs(df: pd.DataFrame) -> pd.Series:
    """Each record's fine-tuning epoch count (NaN where it has no recipe)."""
    return df.finetune.map(lambda f: f.get("epochs") if isinstance(f, dict) else None).astype(float)


def longest_finetune(df: pd.DataFrame) -> pd.DataFrame:
    """The records at each (network, dataset)'s longest fine-tuning epoch count, plus those
    without a recipe: a suite that sweeps ``finetune_epochs`` reports its tables at the
    protocol's count (the longest); the shorter runs are convergence evidence."""
    if df.empty or "finetune" not in df:
        return df
    epochs = finetune_epochs(df)
    longest = epochs.groupby([df.network, df.dataset]).transform("max")
    return df[epochs.isna() | (epochs == longest)]


def convergence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (network, dataset, budget) and method: accuracy after each fine-tuning epoch count
    and the method's rank there (1 = best mean), then a row "Kendall tau vs E epochs" per
    other count: the agreement of its ranking with the longest run's (1 = same order)."""
    ok = _ok_with_acc(df)
    ok = ok[~reference_rows(ok)].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["epochs"] = finetune_epochs(ok)
    rows = []
    for (net, ds, budget), g in ok.groupby(["network", "dataset", "budget"], sort=False):
        means = g.groupby(["label", "epochs"]).acc_after_finetune.agg(["mean", ci_halfwidth]).reset_index()
        wide = means.pivot(index="label", columns="epochs", values="mean")
        ranks = wide.rank(ascending=False, method="min")
        cell = {(r.label, r.epochs): f"{format_acc(r['mean'], r.ci_halfwidth)} ({int(ranks.loc[r.label, r.epochs])})"
                for _, r in means.iterrows()}
        epochs = sorted(wide.columns)
        for label in wide.index:
            rows.append({"network": net, "dataset": ds, "budget": budget, "method": label,
                         **{f"{e:g} ep (rank)": cell.get((label, e), "—") for e in epochs}})
        last = epochs[-1]
        both = wide.dropna()
        tau = {f"{e:g} ep (rank)": (f"{stats.kendalltau(both[e], both[last]).statistic:.2f}"
                                    if len(both) > 1 else "—") for e in epochs}
        rows.append({"network": net, "dataset": ds, "budget": budget,
                     "method": f"Kendall tau vs {last:g} epochs", **tau})
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def status_line(df: pd.DataFrame) -> str:
    counts = df.status.value_counts().to_dict() if len(df) else {}
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no records"
