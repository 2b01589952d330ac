"""A suite's report files (table.md/csv, equal_budget.md/csv, fit_table.*, plots/) from its
records; the numbers come from ``bench.report``."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.jobs import measured_recipe, measurement_key
from bench.records import record_config
from bench.report import (TABLE_NOTE, accuracy_summary, accuracy_table, baseline_split, equal_budget,
                          finetune_epochs, fit_summary, is_sparse, longest_finetune, markdown_table, records_frame,
                          status_line)
from plots.accuracy import plot_accuracy_vs_params, plot_fit_error
from plots.equal_budget import write_equal_budget


def baseline_note(left_out: pd.DataFrame) -> str:
    """The table.md line saying which records were left out for an older dense baseline."""
    if left_out.empty:
        return ""
    return (f"{len(left_out)} record(s) left out: made on an older dense baseline (their "
            "`baseline_fingerprint` differs from that of the latest record of the same network, "
            "dataset and seed; records without one count as one unknown baseline), or with an lr "
            "pick borrowed from such a record or no longer its tuning seed's (bench/stale.py).\n")


def _present(row: dict) -> dict:
    """A frame row as its record had it: without the NaN of the fields it did not have."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def label_epochs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of one label fine-tuned for different epoch counts (a ``finetune_epochs`` suite) get
    the count in their label, so a table row never averages over epoch counts. A method whose
    result ignores the count (dense, NN-BCD: ``bench.jobs.measured_recipe``) keeps its label and
    one record per measurement, at the longest count (its copies at the others, ``same_as``, are
    dropped), so it is listed once with its true number of seeds."""
    if df.empty or "finetune" not in df:
        return df
    epochs = finetune_epochs(df)
    if epochs.nunique() <= 1:
        return df
    counts = pd.Series([isinstance(f, dict) and "epochs" in (measured_recipe(m, f) or {})
                        for m, f in zip(df.method, df.finetune)], index=df.index)
    blind = df[~counts]  # one measurement whatever the count: keep its longest count's copy
    measurement = pd.Series([measurement_key(record_config(_present(r))) for r in blind.to_dict("records")],
                            index=blind.index)
    longest_first = epochs[blind.index].sort_values(ascending=False, kind="stable").index
    once = ~measurement[longest_first].duplicated()
    df = df[counts | once.reindex(df.index, fill_value=False)].copy()
    df["label"] = [f"{lab} ({e:g} ep)" if c else lab
                   for lab, e, c in zip(df.label, epochs[df.index], counts[df.index])]
    return df


def write_accuracy_reports(suite_dir: Path, keys: set[str] | None = None) -> list[Path]:
    df, left_out = baseline_split(records_frame(suite_dir / "runs.jsonl", keys, all_baselines=True))
    if df.empty:
        return []
    status = status_line(df)  # every record, the copies of one measurement included
    df = label_epochs(df)
    s = accuracy_summary(df)
    written = []
    if not s.empty:
        s.to_csv(suite_dir / "table.csv", index=False)
        written.append(suite_dir / "table.csv")
    parts = [f"# {suite_dir.name}: accuracy vs parameters\n", f"Records: {status}.\n",
             baseline_note(left_out),
             f"{TABLE_NOTE} A budget whose allocation equals a smaller "
             "budget's is shown once, at the smallest, with the others under \"same as\".\n"]
    for (net, ds), g in (s.groupby(["network", "dataset"], sort=False) if not s.empty else []):
        view = accuracy_table(g)
        parts.append(f"\n## {net} / {ds} (compressed layers: {int(g.params_dense.iloc[0]):,} parameters)\n\n"
                     + markdown_table(view) + "\n")
        written += plot_accuracy_vs_params(g, f"{net} on {ds}",
                                           suite_dir / "plots" / f"accuracy_vs_params_{net}_{ds}")
    longest = longest_finetune(df)
    eb = equal_budget(longest)
    if not eb.empty:
        written += write_equal_budget(eb, suite_dir / "equal_budget", f"{suite_dir.name}: accuracy at equal budgets")
        parts.append("\nEqual-budget comparison (interpolated at common parameter counts): "
                     "[equal_budget.md](equal_budget.md).\n")
    if any(is_sparse(r) for r in df.to_dict("records")):  # pruning also stores where its weights are
        es = equal_budget(longest, size="storage")
        if not es.empty:
            title = f"{suite_dir.name}: accuracy at equal storage"
            written += write_equal_budget(es, suite_dir / "equal_storage", title, size="storage")
            parts.append("Equal-storage comparison (the same, with pruning's index cost counted): "
                         "[equal_storage.md](equal_storage.md).\n")
    bad = df[df.status != "ok"]
    if len(bad):
        parts.append("\n## Jobs not ok\n\n" + markdown_table(
            bad[["network", "dataset", "label", "budget", "seed", "status", "error"]].fillna("")) + "\n")
    (suite_dir / "table.md").write_text("".join(parts))
    return written + [suite_dir / "table.md"]


def write_fit_reports(suite_dir: Path, keys: set[str] | None = None) -> list[Path]:
    df, left_out = baseline_split(records_frame(suite_dir / "fit_runs.jsonl", keys, all_baselines=True))
    if df.empty:
        return []
    f = fit_summary(df)
    if f.empty:
        return []
    f.to_csv(suite_dir / "fit_table.csv", index=False)
    parts = [f"# {suite_dir.name}: weight-space fit error\n", baseline_note(left_out),
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
