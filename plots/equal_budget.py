"""Rendering of the equal-budget comparison (``bench.report.equal_budget``): one Markdown table
per (network, dataset), methods as columns, and the numbers as CSV."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report import ACC_NOTE, format_acc, markdown_table

NOTE = (f"Accuracy (%) at common parameter counts of the compressed layers, each seed's curve "
        f"interpolated log-linearly in parameters between its measured points (never extrapolated: "
        f"blank outside a method's measured range), then {ACC_NOTE}. **Bold**: the best method at "
        "that count; †: not significantly ahead of the second (Welch t-test, p ≥ 0.05, or under two "
        "seeds).")


def _cell(r) -> str:
    if not r.seeds:
        return ""
    text = format_acc(r.acc_mean, r.acc_ci)
    if r.best:
        text = f"**{text}**" + (" †" if r.not_significant else "")
    return text


def equal_budget_view(long: pd.DataFrame) -> pd.DataFrame:
    """One (network, dataset)'s rows of ``equal_budget`` as a wide table: a row per count."""
    cells = long.assign(cell=[_cell(r) for r in long.itertuples()])
    wide = cells.pivot(index="params", columns="label", values="cell").fillna("")
    wide.columns.name = None
    wide.index = [f"{int(round(p)):,}" for p in wide.index]
    return wide.rename_axis("params").reset_index()


def equal_budget_markdown(long: pd.DataFrame, title: str) -> str:
    parts = [f"# {title}\n\n{NOTE}\n"]
    for (net, ds), g in long.groupby(["network", "dataset"], sort=False):
        parts.append(f"\n## {net} / {ds}\n\n" + markdown_table(equal_budget_view(g)) + "\n")
    return "".join(parts)


def write_equal_budget(long: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """``stem``.md (tables) and ``stem``.csv (the numbers, one row per count and method)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, csv = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(equal_budget_markdown(long, title) if len(long) else f"# {title}\n\n(no common parameter counts)\n")
    long.to_csv(csv, index=False)
    return [md, csv]
