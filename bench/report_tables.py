"""The tables of a suite's report: accuracy against parameters (summary and table.md's rows),
per-layer fit errors, convergence over fine-tuning lengths, and their Markdown text.

Why a module of its own (issue #22): these turn frames (``bench.report_frames``) and cells
(``bench.report_cells``) into the tables ``plots/`` writes; the equal-budget comparison is
apart (``bench.report_equal_budget``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from bench.report_cells import CELL, SEED_RULE, ci_halfwidth, ci_shown, format_acc, format_cell, seed_counts
from bench.report_frames import budget_order, finetune_epochs, fold_budgets, ok_with_acc, reference_rows, seed_frames
from bench.report_sizes import (INDEX_BITS, SIZE_MARK, SIZE_TOLERANCE, VALUE_BITS, is_sparse, layer_storage,
                                network_ratio, ratio_text, record_storage, target_ratios)


def accuracy_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, dataset, label, budget) with an ok seed: accuracy mean, std and 95 %
    CI half-width over the ok seeds, params (achieved) and ``storage`` (``record_storage``), seed
    counts (``seed_counts``; ``seeds`` = ``seeds_ok``), ``bimodal``, ``ci_shown``, ``size_off``
    (achieved ratio more than ``SIZE_TOLERANCE`` off the target) and ``accuracy``, the entry by
    ``SEED_RULE``; saturated budgets folded into the smallest (``folded``). Cells where every seed
    failed have no row (nothing was measured); their records stay among the jobs not ok."""
    ok, failed = seed_frames(df)
    if ok.empty:
        return pd.DataFrame()
    ok = fold_budgets(ok)
    rows = ok.to_dict("records")
    ok = ok.assign(storage=[record_storage(r) for r in rows], net_ratio=[network_ratio(r) for r in rows],
                   target_ratio=target_ratios(ok))
    g = ok.groupby(["network", "dataset", "label", "method", "budget"], sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), acc_ci=("acc", ci_halfwidth),
                acc_before=("acc_before_finetune", "mean"),
                params=("params_compressed_layers", "mean"), params_dense=("params_dense_layers", "first"),
                storage=("storage", "mean"), ratio=("achieved_ratio", "mean"), net_ratio=("net_ratio", "mean"),
                target_ratio=("target_ratio", "first"),
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


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One (network, dataset)'s rows of ``accuracy_summary`` as table.md shows them: achieved size
    and ratio (``SIZE_MARK`` when off target), the whole network's ratio, storage, accuracy by
    ``SEED_RULE``, ok/run seeds."""
    s = summary
    return pd.DataFrame({
        "method": s.label, "budget": s.budget, "params": s.params.round().astype(int),
        "ratio": [ratio_text(r, off) for r, off in zip(s.ratio, s.size_off)],
        "network ratio": s.net_ratio.map(lambda r: "" if r != r else f"{r:.2f}x"),
        "storage (values + index)": s.storage.round().astype(int),
        "acc before ft": s.acc_before.map(lambda a: "" if a != a else f"{a:.2f}"),
        "accuracy (95 % CI)": s.accuracy,
        "fit error": s.fit.map(lambda f: "" if f != f else f"{f:.3g}"),
        "seeds (ok/run)": [f"{k}/{n}" for k, n in zip(s.seeds_ok, s.seeds_run)],
        "same as": s.folded})


#: what the columns of ``accuracy_table`` mean
TABLE_NOTE = (f"Accuracy is test accuracy (%) after fine-tuning: {SEED_RULE}. Params: parameters of the compressed "
              "layers, achieved (mean over ok seeds; pruning counts non-zero weights), with the achieved ratio, "
              f"marked {SIZE_MARK} when it is more than {SIZE_TOLERANCE:.0%} off the budget's target ratio. Network "
              "ratio: the whole network's parameters, dense over compressed (the layers left dense count in "
              "both). Storage "
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


def convergence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (network, dataset, budget) and method: accuracy after each fine-tuning epoch count
    and the method's rank there (1 = best mean), then a row "Kendall tau vs E epochs" per
    other count: the agreement of its ranking with the longest run's (1 = same order)."""
    ok = ok_with_acc(df)
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
