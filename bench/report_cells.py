"""One table cell from its seeds: the seed rule (``SEED_RULE``), seed counts, collapse to chance,
the 95 % CI and the Welch test, and the cell's text.

Why a module of its own (issue #22): the tables, the equal-budget comparison, the paper and
the claims' verdicts all state a cell by this one rule.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from bench.chance import CHANCE_MARGIN, chance_accuracy  # noqa: F401 - "at chance" once, for runs and tables

#: what ``format_acc``'s strings mean (mean ± CI of whatever values it is given)
ACC_NOTE = "mean ± 95 % CI half-width over seeds (Student t; one seed: the mean only)"

#: a cell's mean ± CI needs this many ok seeds (and no failed one, and not bimodal)
MIN_CI_SEEDS = 3
CELL = ["network", "dataset", "label", "budget"]

#: what ``format_cell``'s strings (the ``accuracy`` column of ``accuracy_summary``) mean
SEED_RULE = (f"mean ± 95 % CI half-width over seeds (Student t), given only when {MIN_CI_SEEDS} or more seeds "
             "ran ok and none failed; otherwise \"k/n ok: mean\": k of the n seeds that ran ended ok (a failed "
             "seed: status failed or a non-finite accuracy), the mean of those k, no CI. \"‡ bimodal: c/k at "
             f"chance\": c of the k ok seeds ended within {CHANCE_MARGIN:g} points of chance (100/classes) and the "
             "others did not: the mean of two kinds of run, no CI; \"‡ at chance\": every ok seed did")


def ci_halfwidth(values) -> float:
    """Half-width of the 95 % Student-t confidence interval of the mean; NaN below two values."""
    x = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


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
    return text + chance_mark(ok, collapsed)


def chance_mark(ok: int, collapsed: int) -> str:
    """What a mean over ``ok`` runs, ``collapsed`` of them at chance, says of them (``SEED_RULE``):
    " ‡ bimodal: c/k at chance", " ‡ at chance", or nothing."""
    if 0 < collapsed < ok:
        return f" ‡ bimodal: {collapsed}/{ok} at chance"
    return " ‡ at chance" if collapsed and collapsed == ok else ""


def format_acc(mean: float, ci: float) -> str:
    """``mean ± ci`` with two decimals, the mean alone when the CI is undefined (one seed)."""
    return f"{mean:.2f} ± {ci:.2f}" if ci == ci else f"{mean:.2f}"


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value; NaN under two values a side; with no spread on either
    side, 0 if the means differ else 1 (scipy would return NaN)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
