"""Rendering of the equal-budget comparison (``bench.report.equal_budget``): one Markdown table
per (network, dataset), methods as columns, and the numbers as CSV."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report import SEED_RULE, format_cell, markdown_table

WITHHELD = "—*"

NOTE = (f"Accuracy (%) at common parameter counts of the compressed layers, each seed's curve "
        f"interpolated log-linearly in parameters between its measured points (never extrapolated: "
        f"blank outside a method's measured range), then {SEED_RULE}. **Bold**: the best method at "
        "that count; †: not significantly ahead of the second (Welch t-test, p ≥ 0.05, or under two "
        f"seeds). {WITHHELD}: no value, because a neighbouring measured point of the interpolation failed "
        "on some seed, collapsed to chance or is bimodal, and a line through it would give a value no run "
        "reached (the CSV's `flag` names the point); at a measured point itself its measurement is shown, marked "
        "as the accuracy table marks it. Seeds: the ok seeds behind each method's value at that count, "
        "then in parentheses the methods with another number.")


def _cell(r) -> str:
    if r.flag:
        return WITHHELD
    if not r.seeds:
        return ""
    text = format_cell(r.acc_mean, r.acc_ci, r.seeds, r.seeds_run, r.seeds_collapsed)
    if r.best:
        text = f"**{text}**" + (" †" if r.not_significant else "")
    return text


def _seeds(at_count: pd.DataFrame) -> str:
    """The ok seeds per method at one count: the usual number, then the methods that differ,
    e.g. "3 (adtn 2)"."""
    present = at_count[at_count.seeds > 0]
    if present.empty:
        return ""
    usual = present.seeds.value_counts().sort_index(ascending=False).idxmax()
    others = [f"{r.label} {r.seeds}" for r in present.itertuples() if r.seeds != usual]
    return f"{usual}" + (f" ({', '.join(others)})" if others else "")


#: the equal-storage view (``equal_budget(..., size="storage")``): what differs from ``NOTE``
STORAGE_NOTE = ("The same comparison at equal storage instead of equal parameters: a method's size is its "
                "storage in 32-bit values (the table's \"storage (values + index)\" column), which for pruned "
                "layers adds the positions of the kept weights (the cheaper of a 1-bit-per-weight mask and a "
                "32-bit index per kept weight) and for factorisations equals their parameters. " + NOTE)


def equal_budget_view(long: pd.DataFrame, size: str = "params") -> pd.DataFrame:
    """One (network, dataset)'s rows of ``equal_budget`` as a wide table: a row per count
    (headed ``size``: the counts are parameters or storage)."""
    cells = long.assign(cell=[_cell(r) for r in long.itertuples()])
    wide = cells.pivot(index="params", columns="label", values="cell").fillna("")
    wide.columns.name = None
    wide.insert(0, "seeds", [_seeds(long[long.params == p]) for p in wide.index])
    wide.index = [f"{int(round(p)):,}" for p in wide.index]
    return wide.rename_axis(size).reset_index()


def equal_budget_markdown(long: pd.DataFrame, title: str, size: str = "params") -> str:
    parts = [f"# {title}\n\n{STORAGE_NOTE if size == 'storage' else NOTE}\n"]
    for (net, ds), g in long.groupby(["network", "dataset"], sort=False):
        parts.append(f"\n## {net} / {ds}\n\n" + markdown_table(equal_budget_view(g, size)) + "\n")
    return "".join(parts)


def write_equal_budget(long: pd.DataFrame, stem: Path, title: str, size: str = "params") -> list[Path]:
    """``stem``.md (tables) and ``stem``.csv (the numbers, one row per count and method)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, csv = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(equal_budget_markdown(long, title, size) if len(long)
                  else f"# {title}\n\n(no common {'storage sizes' if size == 'storage' else 'parameter counts'})\n")
    long.to_csv(csv, index=False)
    return [md, csv]
