"""Tables (csv, md) and plots of a suite, as pure functions of its records."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.records import latest_by_key, read_records


def records_frame(path: Path, keys: set[str] | None = None) -> pd.DataFrame:
    """Latest record per job key, as a frame; with ``keys``, only those jobs (a suite's
    current jobs, so records of an edited suite's old configurations stay out)."""
    latest = latest_by_key(read_records(path))
    rows = [r for k, r in latest.items() if keys is None or k in keys]
    frame = pd.DataFrame(rows)
    if len(frame) and "options" in frame:
        # one label must mean one configuration: set apart rows of other option sets
        opts = frame.options.map(lambda o: ",".join(f"{k}={v}" for k, v in sorted(o.items()))
                                 if isinstance(o, dict) else "")
        for label, idx in frame.groupby("label").groups.items():
            if opts[idx].nunique() > 1:
                frame.loc[idx, "label"] = [f"{label} [{o}]" for o in opts[idx]]
    return frame


def _budget_order(b: str) -> float:
    try:
        return float(b[1:]) if b.startswith("x") else 1e12 + float(b.split("=", 1)[1])
    except ValueError:
        return math.inf


def accuracy_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, dataset, label, budget): accuracy mean/std over seeds, params."""
    ok = df[df.status == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["acc"] = ok.acc_after_finetune.where(ok.method != "dense", ok.acc_dense)
    g = ok.groupby(["network", "dataset", "label", "method", "budget"], sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), acc_before=("acc_before_finetune", "mean"),
                params=("params_compressed_layers", "mean"), params_dense=("params_dense_layers", "first"),
                ratio=("achieved_ratio", "mean"), fit=("fit_rel_error", "mean"), seeds=("seed", "nunique"),
                flops=("flops", "mean")).reset_index()
    out["order"] = out.budget.map(_budget_order)
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


def _fmt_acc(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std == std else f"{mean:.2f}"


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def status_line(df: pd.DataFrame) -> str:
    counts = df.status.value_counts().to_dict() if len(df) else {}
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no records"


def write_accuracy_reports(suite_dir: Path, keys: set[str] | None = None) -> list[Path]:
    from plots.accuracy import plot_accuracy_vs_params

    df = records_frame(suite_dir / "runs.jsonl", keys)
    if df.empty:
        return []
    s = accuracy_summary(df)
    written = []
    if not s.empty:
        s.to_csv(suite_dir / "table.csv", index=False)
        written.append(suite_dir / "table.csv")
    parts = [f"# {suite_dir.name}: accuracy vs parameters\n", f"Records: {status_line(df)}.\n",
             "Accuracy is test accuracy (%) after fine-tuning, mean ± std over seeds; parameters are "
             "those of the compressed layers (achieved, mean over seeds).\n"]
    for (net, ds), g in (s.groupby(["network", "dataset"], sort=False) if not s.empty else []):
        view = pd.DataFrame({
            "method": g.label, "budget": g.budget, "params": g.params.round().astype(int),
            "ratio": g.ratio.map(lambda r: f"{r:.1f}x"),
            "acc before ft": g.acc_before.map(lambda a: "" if a != a else f"{a:.2f}"),
            "accuracy": [_fmt_acc(m, sd) for m, sd in zip(g.acc_mean, g.acc_std)],
            "fit error": g.fit.map(lambda f: "" if f != f else f"{f:.3g}"), "seeds": g.seeds})
        parts.append(f"\n## {net} / {ds} (compressed layers: {int(g.params_dense.iloc[0]):,} parameters)\n\n"
                     + markdown_table(view) + "\n")
        written += plot_accuracy_vs_params(g, f"{net} on {ds}",
                                           suite_dir / "plots" / f"accuracy_vs_params_{net}_{ds}")
    bad = df[df.status != "ok"]
    if len(bad):
        parts.append("\n## Jobs not ok\n\n" + markdown_table(
            bad[["network", "dataset", "label", "budget", "seed", "status", "error"]].fillna("")) + "\n")
    (suite_dir / "table.md").write_text("".join(parts))
    return written + [suite_dir / "table.md"]


def write_fit_reports(suite_dir: Path, keys: set[str] | None = None) -> list[Path]:
    from plots.accuracy import plot_fit_error

    df = records_frame(suite_dir / "fit_runs.jsonl", keys)
    if df.empty:
        return []
    f = fit_summary(df)
    if f.empty:
        return []
    f.to_csv(suite_dir / "fit_table.csv", index=False)
    parts = [f"# {suite_dir.name}: weight-space fit error\n",
             "Relative error ‖W − Ŵ‖/‖W‖ of each compressed layer right after factorisation (no training), "
             "mean over seeds.\n"]
    written = [suite_dir / "fit_table.csv"]
    for (net, ds), g in f.groupby(["network", "dataset"], sort=False):
        view = pd.DataFrame({"layer": g.layer, "method": g.label, "budget": g.budget, "knob": g.knob,
                             "params": g.params.round().astype(int),
                             "ratio": (g.params_dense / g.params).map(lambda r: f"{r:.1f}x"),
                             "fit error": g.fit_mean.map(lambda x: f"{x:.4g}")})
        parts.append(f"\n## {net} / {ds}\n\n" + markdown_table(view) + "\n")
        written += plot_fit_error(g, f"{net} on {ds}: weight-space fit",
                                  suite_dir / "plots" / f"fit_error_vs_params_{net}_{ds}")
    (suite_dir / "fit_table.md").write_text("".join(parts))
    return written + [suite_dir / "fit_table.md"]


def write_reports(suite_dir: Path, keys: set[str] | None = None) -> list[Path]:
    """Rebuild every table and plot of a suite directory from its records (of ``keys`` only,
    when given)."""
    return write_accuracy_reports(suite_dir, keys) + write_fit_reports(suite_dir, keys)
