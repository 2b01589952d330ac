"""One suite's cells beside the same cells of the suites it re-runs under a new protocol: per
seed, before and after (``python -m plots compare-protocols``). Written for protocol v3
(``lenet5-v3`` beside ``mnist`` and ``fashion-mnist``, issue #21): a cell is the same network,
dataset, method label, budget and fine-tuning epochs; the seeds are the same seeds (their
baselines share a train recipe; on another machine type their weights differ, which the
baseline accuracies show)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.registry import is_reference
from bench.report import chance_accuracy, format_cell, seed_counts
from bench.report_frames import suite_records_frame

CHANCE_NOTE = "‡: within 1.5 points of chance (10 %: a constant prediction scores 11.35 % on MNIST, 10.00 % on Fashion-MNIST)"


def _frame(path: Path) -> pd.DataFrame:
    """The suite's current jobs (named by its folder), on its current baselines, as its tables read
    them: records of an older definition of the suite (before ``pick_fallbacks``, another epoch
    count) stay out, so a seed is never shown twice."""
    rows = []
    for r in suite_records_frame(path, path.parent.name).to_dict("records"):
        if is_reference(r.get("method")) or r.get("fit_only") is True:
            continue
        finetune = r.get("finetune") if isinstance(r.get("finetune"), dict) else {}
        rows.append({"network": r.get("network"), "dataset": r.get("dataset"), "label": r.get("label", r.get("method")),
                     "budget": r.get("budget"), "epochs": finetune.get("epochs"),
                     "seed": r.get("seed"), "status": r.get("status"), "acc": r.get("acc_after_finetune"),
                     "pick": _pick(r)})
    return pd.DataFrame(rows)


def _pick(r: dict) -> str:
    p = (r.get("lr_tuning") if isinstance(r.get("lr_tuning"), dict) else {}).get("pick")
    if isinstance(p, dict):
        return f"{p.get('optimizer')}@{p.get('lr'):g}"
    return "" if p is None else f"sgd@{p:g}"


def _cell(group: pd.DataFrame) -> tuple[str, str]:
    """(per-seed values, the summary by the report's seed rule) of one side of a cell."""
    ok = group[group.status == "ok"].dropna(subset=["acc"]).sort_values("seed")
    failed = group[group.status == "failed"]
    seeds = " / ".join(f"{a:.2f}" for a in ok.acc) + (f" (+{len(failed)} failed)" if len(failed) else "")
    if not len(ok):
        return seeds or "—", f"0/{len(group)} ok"
    counts = seed_counts(ok.assign(folded=ok.budget), failed).iloc[0]
    from bench.report import ci_halfwidth
    return seeds, format_cell(ok.acc.mean(), ci_halfwidth(ok.acc), int(counts.seeds_ok), int(counts.seeds_run),
                              int(counts.seeds_collapsed))


def compare(new: Path, old: list[Path], title: str) -> str:
    """The markdown table: every cell of ``new`` beside the same cell in ``old`` (if any)."""
    after = _frame(new)
    before = pd.concat([_frame(p) for p in old], ignore_index=True) if old else after.iloc[0:0]
    keys = ["network", "dataset", "label", "budget", "epochs"]
    lines = [f"# {title}", "", "| network | dataset | method | budget | before: seeds | before | after: seeds | after | "
             "after: pick (seed 0) |", "|---|---|---|---|---|---|---|---|---|"]
    if not len(after):
        return "\n".join(lines + ["", "(no records yet)", ""])
    order = sorted(after.groupby(keys).groups, key=lambda k: (k[0], k[1], k[2], float(str(k[3]).lstrip("x") or 0)))
    for cell in order:
        a = after.set_index(keys).loc[[cell]].reset_index()
        b = before.set_index(keys).loc[[cell]].reset_index() if len(before) and cell in before.set_index(keys).index \
            else before.iloc[0:0]
        b_seeds, b_sum = _cell(b) if len(b) else ("—", "—")
        a_seeds, a_sum = _cell(a)
        pick = a[a.seed == a.seed.min()].pick.iloc[0]
        lines.append(f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]} | {b_seeds} | {b_sum} | {a_seeds} | {a_sum} | {pick} |")
    chance = sorted({f"{d} {chance_accuracy(d):.2f} %" for d in after.dataset})
    return "\n".join(lines + ["", f"Test accuracy (%) after fine-tuning, per seed (0 / 1 / 2) and by the report's seed "
                                  f"rule. {CHANCE_NOTE}. Chance by the registry: {', '.join(chance)}.", ""])
