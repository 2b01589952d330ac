"""Report data: frames and strings computed from a suite's records, never files or figures
(those are in ``plots/``, which imports this module; this module never imports ``plots``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.records import latest_by_key, read_records

#: what the accuracy columns of every table mean
ACC_NOTE = "mean ± 95 % CI half-width over seeds (Student t; one seed: the mean only)"
UNKNOWN_BASELINE = "unknown"


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


def _ok_with_acc(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df.status == "ok"].copy() if len(df) else pd.DataFrame()
    if ok.empty:
        return ok
    ok["acc"] = ok.acc_after_finetune.where(ok.method != "dense", ok.acc_dense)
    return ok


def accuracy_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, dataset, label, budget): accuracy mean, std and 95 % CI half-width
    over seeds, params; saturated budgets folded into the smallest (``folded``)."""
    ok = _ok_with_acc(df)
    if ok.empty:
        return pd.DataFrame()
    ok = fold_budgets(ok)
    g = ok.groupby(["network", "dataset", "label", "method", "budget"], sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), acc_ci=("acc", ci_halfwidth),
                acc_before=("acc_before_finetune", "mean"),
                params=("params_compressed_layers", "mean"), params_dense=("params_dense_layers", "first"),
                ratio=("achieved_ratio", "mean"), fit=("fit_rel_error", "mean"), seeds=("seed", "nunique"),
                flops=("flops", "mean"), folded=("folded", "first")).reset_index()
    out["order"] = out.budget.map(budget_order)
    return out.sort_values(["network", "dataset", "method", "label", "order"]).drop(columns="order")


def fit_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, dataset, layer, label, budget): fit error mean over seeds, params."""
    rows = []
    for r in df[df.status == "ok"].itertuples():
        for layer, info in (r.layer_info or {}).items():
            rows.append({"network": r.network, "dataset": r.dataset, "layer": layer, "label": r.label,
                         "method": r.method, "budget": r.budget, "params": info["params"],
                         "params_dense": info["params_dense"], "fit": info["fit_rel_error"], "knob": str(info["knob"])})
    if not rows:
        return pd.DataFrame()
    f = pd.DataFrame(rows)
    return (f.groupby(["network", "dataset", "layer", "label", "method", "budget", "knob"], sort=False)
             .agg(params=("params", "mean"), params_dense=("params_dense", "first"), fit_mean=("fit", "mean"),
                  fit_std=("fit", "std")).reset_index())


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


def equal_budget(df: pd.DataFrame, counts=None, points: int = 8, alpha: float = 0.05) -> pd.DataFrame:
    """Accuracy of every method at common parameter counts, per (network, dataset): each seed's
    curve is interpolated log-linearly in parameters between its own measured points (never
    extrapolated: NaN where any of the method's seeds lacks a measurement on either side), then
    mean ± CI over seeds. ``best`` marks the highest mean at a
    count; ``not_significant`` marks a best whose Welch t-test against the second gives
    p >= ``alpha`` (or cannot be done: under two seeds). ``counts`` overrides the grid."""
    ok = _ok_with_acc(df)
    if ok.empty:
        return pd.DataFrame()
    ok = fold_budgets(ok[ok.method != "dense"])
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
        for i, n in enumerate(grid):
            rows = []
            for label, (method, _) in curves.items():
                v = vals[label][:, i]
                v = v[:0] if np.isnan(v).any() else v
                rows.append({"network": net, "dataset": ds, "params": n, "label": label, "method": method,
                             "acc_mean": v.mean() if len(v) else np.nan, "acc_ci": ci_halfwidth(v),
                             "seeds": len(v), "p_value": np.nan, "best": False, "not_significant": False,
                             "_values": v})
            ranked = sorted((r for r in rows if r["seeds"]), key=lambda r: -r["acc_mean"])
            if ranked:
                ranked[0]["best"] = True
                p = float("nan")
                if len(ranked) > 1:
                    p = welch_p(ranked[0]["_values"], ranked[1]["_values"])
                ranked[0]["p_value"] = p
                ranked[0]["not_significant"] = len(ranked) > 1 and not p < alpha
            out += rows
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).drop(columns="_values")


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
    ok = ok[ok.method != "dense"].copy()
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
