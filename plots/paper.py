"""Paper figures and tables from recorded results, no training:
``python -m plots paper --results results --out results/figures``.

Every suite directory under ``--results`` with a ``runs.jsonl`` feeds the accuracy, cost and
headline views; ``fit_runs.jsonl`` files feed the fit-error figure; the suites named
``adtn-depth`` and ``adtn-order`` feed the depth and order studies.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import pandas as pd
import yaml

from bench.report import accuracy_summary, fit_summary, records_frame
from plots.accuracy import _save, plot_fit_error
from plots.style import ONE_COLUMN, TWO_COLUMN, method_style
from plots.tables import write_table

DEPTH_SUITE, ORDER_SUITE = "adtn-depth", "adtn-order"
DELTAS = (0.0, 0.5, 1.0, 2.0)
REFERENCE = Path(__file__).with_name("reference_results.yaml")


def pareto_mask(params: pd.Series, acc: pd.Series) -> list[bool]:
    """True where no other point has fewer-or-equal parameters and higher accuracy."""
    order = sorted(range(len(params)), key=lambda i: (params.iloc[i], -acc.iloc[i]))
    mask, best = [False] * len(params), -math.inf
    for i in order:
        if acc.iloc[i] > best:
            mask[i], best = True, acc.iloc[i]
    return mask


def _method_lines(ax, summary: pd.DataFrame, x: str) -> None:
    for label, g in summary[summary.method != "dense"].groupby("label", sort=True):
        g = g.dropna(subset=[x]).sort_values(x)
        if g.empty:
            continue
        style = method_style(label, g.method.iloc[0])
        front = pareto_mask(g[x], g.acc_mean)
        ax.errorbar(g[x], g.acc_mean, yerr=g.acc_std.fillna(0), color=style["color"], lw=0.9, capsize=2,
                    marker=style["marker"], ms=4, mfc="white", label=label)
        f = g[front]
        ax.plot(f[x], f.acc_mean, ls="none", marker=style["marker"], ms=5, color=style["color"], zorder=4)


def figure_accuracy(summary: pd.DataFrame, title: str, stem: Path, x: str = "params") -> list[Path]:
    fig, ax = plt.subplots(figsize=(ONE_COLUMN[0] * 1.5, ONE_COLUMN[1] * 1.4))
    _method_lines(ax, summary, x)
    dense = summary[summary.method == "dense"]
    if len(dense):
        ax.axhline(dense.acc_mean.iloc[0], color="black", ls="--", lw=0.9, label=f"dense {dense.acc_mean.iloc[0]:.2f}%")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters of the compressed layers" if x == "params" else "FLOPs per image (forward)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title + ("" if x == "params" else " — cost"), fontsize=9)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              title="filled: Pareto front", title_fontsize=6.5)
    return _save(fig, stem)


def _knob_of(budget: str) -> float:
    return float(budget.split("=", 1)[1]) if budget.startswith("knob=") else float("nan")


def figure_depth(df: pd.DataFrame, stem: Path) -> list[Path]:
    """ADTN depth study: accuracy and fit error vs depth M, one line per network."""
    ok = df[(df.status == "ok") & (df.method == "adtn")].copy()
    ok["M"] = ok.budget.map(_knob_of)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=TWO_COLUMN)
    for (net, ds), g in ok.groupby(["network", "dataset"]):
        s = g.groupby("M").agg(acc=("acc_after_finetune", "mean"), sd=("acc_after_finetune", "std"),
                               fit=("fit_rel_error", "mean"), dense=("acc_dense", "mean")).reset_index()
        line = a1.errorbar(s.M, s.acc, yerr=s.sd.fillna(0), marker="o", ms=4, capsize=2, label=f"{net}/{ds}")
        a1.axhline(s.dense.iloc[0], ls="--", lw=0.8, color=line[0].get_color())
        a2.plot(s.M, s.fit, marker="o", ms=4, label=f"{net}/{ds}")
    a1.set_xlabel("ADTN depth M")
    a1.set_ylabel("test accuracy (%) (dashed: dense)")
    a2.set_xlabel("ADTN depth M")
    a2.set_ylabel("relative fit error ‖W−Ŵ‖/‖W‖")
    a2.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3, lw=0.5)
    a2.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save(fig, stem)


def figure_order(df: pd.DataFrame, stem: Path) -> list[Path]:
    """Compression order: accuracy vs achieved parameters per order, one panel per network."""
    s = accuracy_summary(df)
    groups = list(s.groupby(["network", "dataset"], sort=True))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=TWO_COLUMN, squeeze=False)
    for ax, ((net, ds), g) in zip(axes[0], groups):
        for label, h in g[g.method != "dense"].groupby("label"):
            h = h.sort_values("params")
            ax.errorbar(h.params, h.acc_mean, yerr=h.acc_std.fillna(0), marker="o", ms=4, capsize=2, label=label)
        dense = g[g.method == "dense"]
        if len(dense):
            ax.axhline(dense.acc_mean.iloc[0], color="black", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{net}/{ds}", fontsize=8)
        ax.set_xlabel("parameters of the compressed layers")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save(fig, stem)


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Most compressed point of each method within δ of the dense accuracy
    (torchprune's "commensurate accuracy" view)."""
    rows = []
    for (net, ds), g in summary.groupby(["network", "dataset"], sort=False):
        dense = g[g.method == "dense"]
        if dense.empty:
            continue
        ref = dense.acc_mean.iloc[0]
        for label, h in g[g.method != "dense"].groupby("label", sort=True):
            for d in DELTAS:
                ok = h[h.acc_mean >= ref - d]
                row = {"network": net, "dataset": ds, "dense params": int(h.params_dense.iloc[0]),
                       "dense acc": f"{ref:.2f}", "method": label, "δ (%)": d}
                if ok.empty:
                    row.update({"params": "—", "ratio": "—", "accuracy": "—"})
                else:
                    best = ok.sort_values("params").iloc[0]
                    sd = best.acc_std
                    row.update({"params": int(round(best.params)), "ratio": f"{best.ratio:.1f}×",
                                "accuracy": f"{best.acc_mean:.2f} ± {sd:.2f}" if sd == sd else f"{best.acc_mean:.2f}"})
                rows.append(row)
    return pd.DataFrame(rows)


def reported_vs_measured(records: pd.DataFrame) -> pd.DataFrame:
    """The paper's reported numbers beside ours; missing measurements stay missing."""
    ref = yaml.safe_load(REFERENCE.read_text())
    rows = []
    for r in ref["rows"]:
        mine = records[(records.status == "ok") & (records.network == r["network"]) &
                       (records.dataset == r["dataset"]) & (records.method == r["method"])] if len(records) else records
        measured = {"measured params": "—", "measured dense acc": "—", "measured acc": "—"}
        if len(mine):
            best = mine.iloc[(mine.params_compressed_layers - r["params_method"]).abs().argsort()[:1]].iloc[0]
            same = mine[mine.params_compressed_layers == best.params_compressed_layers]
            measured = {"measured params": int(best.params_compressed_layers),
                        "measured dense acc": f"{same.acc_dense.mean():.2f}",
                        "measured acc": f"{same.acc_after_finetune.mean():.2f} (n={len(same)})"}
        rows.append({"setting": f"{r['network']}/{r['dataset']} {r['version']}", "layers": r["layers"],
                     "reported params": r["params_method"],
                     "reported acc": f"{r['acc_dense']:.2f} → {r['acc_method']:.2f}", **measured,
                     "source": ref["citation"]})
    return pd.DataFrame(rows)


def build(results: Path, out: Path) -> list[tuple[Path, str]]:
    """Write every figure and table; returns (path, caption) for the index."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, str]] = []
    sweeps, fits = [], []
    for suite_dir in sorted(p for p in results.iterdir() if p.is_dir()):
        if (suite_dir / "runs.jsonl").exists():
            sweeps.append((suite_dir.name, records_frame(suite_dir / "runs.jsonl")))
        if (suite_dir / "fit_runs.jsonl").exists():
            fits.append((suite_dir.name, records_frame(suite_dir / "fit_runs.jsonl")))
    summaries, all_records = [], []
    for name, df in sweeps:
        if name == DEPTH_SUITE:
            for p in figure_depth(df, out / "fig3_adtn_depth"):
                made.append((p, "ADTN depth study: test accuracy and weight-space fit error vs depth M."))
            continue
        if name == ORDER_SUITE:
            for p in figure_order(df, out / "fig4_adtn_order"):
                made.append((p, "Compression order: ADTN backward vs forward vs all-at-once, accuracy vs parameters."))
            continue
        all_records.append(df)
        s = accuracy_summary(df)
        if s.empty:
            continue
        summaries.append(s.assign(suite=name))
        for (net, ds), g in s.groupby(["network", "dataset"], sort=False):
            for p in figure_accuracy(g, f"{net} on {ds} ({name})", out / f"fig1_accuracy_{name}_{net}_{ds}"):
                made.append((p, f"{name}: accuracy vs achieved parameters of the compressed layers, {net} on {ds}; "
                                "error bars over seeds, dashed: dense, filled markers: each method's Pareto front."))
            if g.flops.notna().any():
                for p in figure_accuracy(g, f"{net} on {ds} ({name})", out / f"fig5_cost_{name}_{net}_{ds}", x="flops"):
                    made.append((p, f"{name}: accuracy vs forward FLOPs per image, {net} on {ds}."))
    for name, df in fits:
        f = fit_summary(df)
        for (net, ds), g in f.groupby(["network", "dataset"], sort=False):
            for p in plot_fit_error(g, f"{net} on {ds}: weight-space fit", out / f"fig2_fit_{name}_{net}_{ds}"):
                made.append((p, f"{name}: relative weight-space error per layer vs its parameters (log-log), {net} on {ds}, no training."))
    if summaries:
        head = headline_table(pd.concat(summaries))
        for p in write_table(head, out / "table_headline", "Most compressed point within δ of dense accuracy"):
            made.append((p, "Headline: each method's most compressed point whose mean accuracy is within δ of dense."))
    records = pd.concat(all_records) if all_records else pd.DataFrame()
    for p in write_table(reported_vs_measured(records), out / "table_reported_vs_measured",
                         "ADTN: reported (arXiv 2305.06058) vs measured"):
        made.append((p, "The ADTN paper's reported numbers beside ours (— where not measured)."))
    index = ["# tnbench figures and tables\n", f"Generated from the records under `{results}`.\n"]
    index += [f"- [{p.name}]({p.name}): {caption}" for p, caption in made]
    (out / "index.md").write_text("\n".join(index) + "\n")
    return made + [(out / "index.md", "this index")]
