"""Paper figures and tables from recorded results, no training:
``python -m plots paper --results results --out results/figures [--suites a,b]``.

Which suite feeds which figure is declared by the suite itself: ``paper: [accuracy, cost, ...]``
in ``bench/suites/<name>.yaml`` (roles in ``PAPER_ROLES``), read through its ``base:`` chain as a
run reads it (``bench.suite.load_suite``). By default only suites declaring ``paper:`` are
read, so a left-over results folder (a smoke run) stays out of the paper.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from bench.report import (ACC_NOTE, MIN_CI_SEEDS, accuracy_summary, budget_order, ci_halfwidth, convergence_table,
                          equal_budget, finetune_epochs, fit_summary, format_acc, longest_finetune,
                          reference_rows)
from bench.report_frames import suite_records_frame
from bench.suite_schema import SUITES_DIR
from plots.accuracy import plot_fit_error
from plots.equal_budget import write_equal_budget
from plots.style import ONE_COLUMN, TWO_COLUMN, clamp_percent, method_style, save_figure
from plots.tables import write_table

#: roles of a suite named on the command line whose YAML declares none
DEFAULT_ROLES = frozenset({"accuracy", "fit", "cost", "headline"})
DELTAS = (0.0, 0.5, 1.0, 2.0)
REFERENCE = Path(__file__).with_name("reference_results.yaml")


def suite_roles(name: str, suites_dir: Path = SUITES_DIR) -> frozenset[str] | None:
    """The ``paper:`` roles a suite declares, through ``base:`` as a run reads it (a child such as
    cifar10-conv inherits its base's); None when the file or the key is missing. Unknown roles
    are refused by the suite's validation, not silently ignored."""
    from bench.suite import load_suite

    path = Path(suites_dir) / f"{name}.yaml"
    if not path.is_file():
        return None
    roles = load_suite(str(path)).paper
    return None if roles is None else frozenset(roles)


def paper_suites(suites: list[str] | None = None, suites_dir: Path = SUITES_DIR) -> dict[str, frozenset[str]]:
    """Suite name -> roles: the named ``suites`` (default roles where undeclared), else every
    suite of ``suites_dir`` that declares ``paper:``."""
    if suites is not None:
        return {n: suite_roles(n, suites_dir) or DEFAULT_ROLES for n in suites}
    found = {p.stem: suite_roles(p.stem, suites_dir) for p in sorted(Path(suites_dir).glob("*.yaml"))}
    return {n: r for n, r in found.items() if r is not None}


def pareto_mask(params: pd.Series, acc: pd.Series) -> list[bool]:
    """True where no other point has fewer-or-equal parameters and higher accuracy."""
    order = sorted(range(len(params)), key=lambda i: (params.iloc[i], -acc.iloc[i]))
    mask, best = [False] * len(params), -math.inf
    for i in order:
        if acc.iloc[i] > best:
            mask[i], best = True, acc.iloc[i]
    return mask


def _method_lines(ax, summary: pd.DataFrame, x: str) -> None:
    for label, g in summary[~reference_rows(summary)].groupby("label", sort=True):
        g = g.dropna(subset=[x]).sort_values(x)
        if g.empty:
            continue
        style = method_style(label, g.method.iloc[0])
        front = pareto_mask(g[x], g.acc_mean)
        ax.errorbar(g[x], g.acc_mean, yerr=g.acc_ci.fillna(0), color=style["color"], lw=0.9, capsize=2,
                    marker=style["marker"], ms=4, mfc="white", label=label)
        f = g[front]
        ax.plot(f[x], f.acc_mean, ls="none", marker=style["marker"], ms=5, color=style["color"], zorder=4)


def figure_accuracy(summary: pd.DataFrame, title: str, stem: Path, x: str = "params") -> list[Path]:
    fig, ax = plt.subplots(figsize=(ONE_COLUMN[0] * 1.5, ONE_COLUMN[1] * 1.4))
    _method_lines(ax, summary, x)
    dense = summary[reference_rows(summary)]
    if len(dense):
        ax.axhline(dense.acc_mean.iloc[0], color="black", ls="--", lw=0.9, label=f"dense {dense.acc_mean.iloc[0]:.2f}%")
    ax.set_xscale("log")
    ax.set_xlabel("parameters of the compressed layers" if x == "params" else "FLOPs per image (forward)")
    ax.set_ylabel("test accuracy (%), 95 % CI")
    clamp_percent(ax)
    ax.set_title(title + ("" if x == "params" else " — cost"), fontsize=9)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              title="filled: Pareto front", title_fontsize=6.5)
    return save_figure(fig, stem)


def _knob_of(budget: str) -> float:
    return float(budget.split("=", 1)[1]) if budget.startswith("knob=") else float("nan")


def figure_depth(df: pd.DataFrame, stem: Path) -> list[Path]:
    """ADTN depth study: accuracy and fit error vs depth M, one line per network (and per entry,
    when the suite has several: adtn-depth-v3's pre-fit and scratch starts)."""
    ok = df[(df.status == "ok") & (df.method == "adtn")].copy()
    ok["M"] = ok.budget.map(_knob_of)
    entries = ok.label.nunique() > 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=TWO_COLUMN)
    for (net, ds, label), g in ok.groupby(["network", "dataset", "label"]):
        s = g.groupby("M").agg(acc=("acc_after_finetune", "mean"), ci=("acc_after_finetune", ci_halfwidth),
                               fit=("fit_rel_error", "mean"), dense=("acc_dense", "mean")).reset_index()
        name = f"{net}/{ds} {label}" if entries else f"{net}/{ds}"
        line = a1.errorbar(s.M, s.acc, yerr=s.ci.fillna(0), marker="o", ms=4, capsize=2, label=name)
        a1.axhline(s.dense.iloc[0], ls="--", lw=0.8, color=line[0].get_color())
        a2.plot(s.M, s.fit, marker="o", ms=4, label=name, color=line[0].get_color())
    clamp_percent(a1)
    a1.set_xlabel("ADTN depth M")
    a1.set_ylabel("test accuracy (%), 95 % CI\n(dashed: dense)")
    a2.set_xlabel("ADTN depth M")
    a2.set_ylabel("relative fit error ‖W−Ŵ‖/‖W‖")
    a2.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3, lw=0.5)
        ax.set_xticks(sorted(ok.M.unique()))  # the depths measured, not 2.5 / 5.0 / 7.5
    a2.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, stem, tight=True)


def figure_order(df: pd.DataFrame, stem: Path) -> list[Path]:
    """Compression order: accuracy vs achieved parameters per order, one panel per network."""
    s = accuracy_summary(df)
    groups = list(s.groupby(["network", "dataset"], sort=True))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=TWO_COLUMN, squeeze=False)
    for ax, ((net, ds), g) in zip(axes[0], groups):
        ref = reference_rows(g)
        for label, h in g[~ref].groupby("label"):
            h = h.sort_values("params")
            ax.errorbar(h.params, h.acc_mean, yerr=h.acc_ci.fillna(0), ms=4, capsize=2, label=label,
                        **method_style(label, h.method.iloc[0]))
        dense = g[ref]
        if len(dense):
            ax.axhline(dense.acc_mean.iloc[0], color="black", ls="--", lw=0.8)
        ax.set_xscale("log")
        clamp_percent(ax)
        ax.set_title(f"{net}/{ds}", fontsize=8)
        ax.set_xlabel("parameters of the compressed layers")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    axes[0][0].set_ylabel("test accuracy (%), 95 % CI")
    axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, stem, tight=True)


def dense_accuracy(records: pd.DataFrame) -> float:
    """The dense baselines' test accuracy, a mean over seeds (each record carries its seed's
    baseline's ``acc_dense``; a mean over records would weight a seed by its number of jobs)."""
    return float(records.groupby("seed").acc_dense.first().mean())


def figure_convergence(df: pd.DataFrame, stem: Path) -> list[Path]:
    """Test accuracy (mean ± 95 % CI over seeds) vs fine-tuning epochs, a line per method, a
    panel per (network, dataset, budget); dense dashed."""
    ok = df[df.status == "ok"].copy()
    ok["epochs"] = finetune_epochs(ok)
    dense = {k: dense_accuracy(g) for k, g in ok.groupby(["network", "dataset"])}
    ok = ok[~reference_rows(ok)]
    panels = sorted(ok.groupby(["network", "dataset", "budget"]), key=lambda p: (*p[0][:2], budget_order(p[0][2])))
    cols = min(max(len(panels), 1), 3)
    rows = max(-(-len(panels) // cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(TWO_COLUMN[0], TWO_COLUMN[1] * rows), squeeze=False)
    for ax, ((net, ds, budget), g) in zip(axes.flat, panels):
        for label, h in g.groupby("label", sort=True):
            s = h.groupby("epochs").acc_after_finetune.agg(["mean", ci_halfwidth]).reset_index()
            ax.errorbar(s.epochs, s["mean"], yerr=s.ci_halfwidth.fillna(0), ms=4, capsize=2, lw=1.1, label=label,
                        **method_style(label, h.method.iloc[0]))
        if (net, ds) in dense:
            ax.axhline(dense[(net, ds)], color="black", ls="--", lw=0.8)
        clamp_percent(ax)
        ax.set_title(f"{net}/{ds} {budget}", fontsize=8)
        ax.set_xlabel("fine-tuning epochs")
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("test accuracy (%), 95 % CI")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 6),
                   bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the panels, however many rows it takes
    return save_figure(fig, stem, tight=True)


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Most compressed point of each method within δ of the dense accuracy
    (torchprune's "commensurate accuracy" view); accuracy as mean ± 95 % CI."""
    rows = []
    for (net, ds), g in summary.groupby(["network", "dataset"], sort=False):
        is_ref = reference_rows(g)
        dense = g[is_ref]
        if dense.empty:
            continue
        ref = dense.acc_mean.iloc[0]
        for label, h in g[~is_ref].groupby("label", sort=True):
            for d in DELTAS:
                ok = h[h.acc_mean >= ref - d]
                row = {"network": net, "dataset": ds, "dense params": int(h.params_dense.iloc[0]),
                       "dense acc": f"{ref:.2f}", "method": label, "δ (%)": d}
                if ok.empty:
                    row.update({"params": "—", "ratio": "—", "accuracy": "—"})
                else:
                    best = ok.sort_values("params").iloc[0]
                    row.update({"params": int(round(best.params)), "ratio": f"{best.ratio:.1f}×",
                                "accuracy": best.accuracy})  # by the tables' seed rule (bench.report)
                rows.append(row)
    return pd.DataFrame(rows)


def reported_vs_measured(records: pd.DataFrame) -> pd.DataFrame:
    """The paper's reported numbers beside ours; missing measurements stay missing.

    Each reference row names the suite that measures it (``suite``): its ADTN records at the
    suite's ``headline_ratio`` budget give the measured size and accuracy (mean ± 95 % CI over
    seeds), and every other method's accuracy at that budget is listed beside it, with its own
    achieved size (methods whose smallest size is over the budget are recorded skipped)."""
    ref = yaml.safe_load(REFERENCE.read_text())
    rows = []
    for r in ref["rows"]:
        measured = {"measured params": "—", "measured dense acc": "—", "measured acc": "—",
                    "other methods at this budget": "—"}
        mine = pd.DataFrame()
        if len(records) and "suite" in records:
            mine = records[(records.status == "ok") & (records.suite == r["suite"]) &
                           (records.network == r["network"]) & (records.dataset == r["dataset"])]
        budget = f"x{r['budget_ratio']:g}" if "budget_ratio" in r else None
        at = mine[mine.budget == budget] if len(mine) and budget else mine
        adtn = at[at.method == r["method"]] if len(at) else at
        def acc_text(acc: pd.Series, size: str = "") -> str:  # mean ± CI from 3 seeds on (the seed rule)
            ci = ci_halfwidth(acc) if len(acc) >= MIN_CI_SEEDS else float("nan")
            return f"{format_acc(acc.mean(), ci)} ({size}n={len(acc)})"

        if len(adtn):  # one entry per configuration (label: layout, order), best first, never pooled
            by_label = sorted(adtn.groupby("label"), key=lambda kv: -kv[1].acc_after_finetune.mean())
            acc = (acc_text(adtn.acc_after_finetune) if len(by_label) == 1 else
                   "; ".join(f"{label} {acc_text(g.acc_after_finetune)}" for label, g in by_label))
            dense = dense_accuracy(mine[mine.seed.isin(adtn.seed.unique())])  # the seeds ADTN ran on
            measured.update({"measured params": int(adtn.params_compressed_layers.iloc[0]),
                             "measured dense acc": f"{dense:.2f}", "measured acc": acc})
        others = at[(at.method != r["method"]) & ~reference_rows(at)] if len(at) else at
        if len(others):
            parts = []
            for label, g in sorted(others.groupby("label"), key=lambda kv: -kv[1].acc_after_finetune.mean()):
                size = f"{int(g.params_compressed_layers.iloc[0]):,} p, "
                parts.append(f"{label} {acc_text(g.acc_after_finetune, size)}")
            measured["other methods at this budget"] = "; ".join(parts)
        rows.append({"setting": f"{r['network']}/{r['dataset']} {r['version']}", "layers": r["layers"],
                     "reported params": r["params_method"],
                     "reported acc": f"{r['acc_dense']:.2f} → {r['acc_method']:.2f}", **measured,
                     "suite": r.get("suite", "—"), "source": ref["citation"]})
    return pd.DataFrame(rows)


def _accuracy_views(name: str, s: pd.DataFrame, roles: frozenset[str], out: Path) -> list[tuple[Path, str]]:
    made = []
    for (net, ds), g in s.groupby(["network", "dataset"], sort=False):
        if "accuracy" in roles:
            for p in figure_accuracy(g, f"{net} on {ds} ({name})", out / f"fig1_accuracy_{name}_{net}_{ds}"):
                made.append((p, f"{name}: accuracy vs achieved parameters of the compressed layers, {net} on {ds}; "
                                "error bars: 95 % CI over seeds, dashed: dense, filled markers: each method's Pareto front."))
        if "cost" in roles and g.flops.notna().any():
            for p in figure_accuracy(g, f"{net} on {ds} ({name})", out / f"fig5_cost_{name}_{net}_{ds}", x="flops"):
                made.append((p, f"{name}: accuracy vs forward FLOPs per image, {net} on {ds}."))
    return made


def build(results: Path, out: Path, suites: list[str] | None = None,
          suites_dir: Path = SUITES_DIR, index_for: Path | None = None) -> list[tuple[Path, str]]:
    """Write every figure and table of the suites (``paper_suites``) found under ``results``;
    returns (path, caption) for the index. ``index_for``: the folder the index names
    ``results`` from (default ``out``; ``paper --check`` builds elsewhere for ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, str]] = []
    summaries, measured = [], []
    for name, roles in sorted(paper_suites(suites, suites_dir).items()):
        runs, fits = results / name / "runs.jsonl", results / name / "fit_runs.jsonl"
        if "fit" in roles and fits.exists():
            f = fit_summary(suite_records_frame(fits, name, suites_dir, fit_only=True))
            for (net, ds), g in (f.groupby(["network", "dataset"], sort=False) if len(f) else []):
                for p in plot_fit_error(g, f"{net} on {ds}: weight-space fit", out / f"fig2_fit_{name}_{net}_{ds}"):
                    made.append((p, f"{name}: relative weight-space error per layer vs its parameters (log-log), "
                                    f"{net} on {ds}, no training."))
        if not runs.exists():
            continue
        df = suite_records_frame(runs, name, suites_dir)
        if df.empty:
            continue
        # every figure and table but the convergence study's: each network at its protocol epochs
        protocol = longest_finetune(df)
        if "depth" in roles:
            for p in figure_depth(protocol, out / f"fig3_depth_{name}"):
                made.append((p, f"{name}: ADTN depth study, test accuracy and weight-space fit error vs depth M."))
        if "order" in roles:
            for p in figure_order(protocol, out / f"fig4_order_{name}"):
                made.append((p, f"{name}: compression order, ADTN backward vs forward vs all-at-once, accuracy vs parameters."))
        if "convergence" in roles:
            for p in figure_convergence(df, out / f"fig6_convergence_{name}"):
                made.append((p, f"{name}: test accuracy vs fine-tuning epochs, {ACC_NOTE}."))
            for p in write_table(convergence_table(df), out / f"table_convergence_{name}",
                                 f"{name}: accuracy (rank) after each fine-tuning epoch count"):
                made.append((p, f"{name}: each method's accuracy ({ACC_NOTE}) and rank per epoch count; Kendall "
                                "tau of each count's ranking against the longest run's."))
        if "equal-budget" in roles:
            eb = equal_budget(protocol)
            for p in write_equal_budget(eb, out / f"table_equal_budget_{name}", f"{name}: accuracy at equal budgets"):
                made.append((p, f"{name}: every method's accuracy interpolated at common parameter counts; "
                                "bold best, † not significantly ahead of the second."))
        s = accuracy_summary(protocol)
        if s.empty:
            continue
        made += _accuracy_views(name, s, roles, out)
        if "headline" in roles:
            summaries.append(s.assign(suite=name))
        if roles & {"accuracy", "headline"}:
            measured.append(protocol)
    if summaries:
        head = headline_table(pd.concat(summaries))
        for p in write_table(head, out / "table_headline", "Most compressed point within δ of dense accuracy"):
            made.append((p, "Headline: each method's most compressed point whose mean accuracy is within δ of dense "
                            f"({ACC_NOTE})."))
    records = pd.concat(measured) if measured else pd.DataFrame()
    for p in write_table(reported_vs_measured(records), out / "table_reported_vs_measured",
                         "ADTN: reported (arXiv 2305.06058) vs measured"):
        made.append((p, "The ADTN paper's reported numbers beside ours (— where not measured)."))
    where = os.path.relpath(results, index_for or out)  # the same text wherever the checkout is (``paper --check``)
    index = ["# tnbench figures and tables\n", f"Generated from the records under `{where}` (relative to this folder).\n"]
    index += [f"- [{p.name}]({p.name}): {caption}" for p, caption in made]
    (out / "index.md").write_text("\n".join(index) + "\n")
    return made + [(out / "index.md", "this index")]
