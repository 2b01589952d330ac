"""Record queries of ``results/claims.yaml`` claims: which records a query selects and the number
it reduces them to (``run_query``; the query keys are documented in ``bench.verdicts``).

Split out of ``bench.verdicts``; a query's result is a ``bench.verdict_expr.Value``.
"""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from bench.report import (ci_halfwidth, collapsed_seeds, equal_budget, finetune_epochs, longest_finetune,
                          reference_rows, welch_p)
from bench.report_frames import suite_records_frame
from bench.verdict_expr import ClaimError, Value

FILTERS = ("network", "dataset", "label", "method", "budget", "seed")
QUERY_KEYS = set(FILTERS) | {"suite", "file", "epochs", "status", "error_contains", "field", "stat", "minus",
                             "at_params", "between", "separated", "fmt", "welch"}
STATS = {"mean", "ci", "std", "min", "max", "n", "value", "order_changes", "kendall_tau", "rank"}


class Records:
    """Record frames of the suites under ``results``, read once each."""

    def __init__(self, results: Path | str):
        self.results = Path(results)
        self._frames: dict[Path, pd.DataFrame] = {}

    def frame(self, suite: str, file: str | None = None) -> pd.DataFrame:
        folder = self.results / suite
        path = folder / file if file else next((folder / f for f in ("runs.jsonl", "fit_runs.jsonl")
                                                if (folder / f).exists()), folder / "runs.jsonl")
        if path not in self._frames:
            if not path.exists():
                raise ClaimError(f"no records {path}")
            df = suite_records_frame(path, suite, fit_only=path.name == "fit_runs.jsonl")
            if len(df) and "finetune" in df:
                df = df.assign(_epochs=finetune_epochs(df))
            self._frames[path] = df
        return self._frames[path]


def _field(record_value: Any, path: list[str]) -> Any:
    x = record_value
    for part in path:
        if isinstance(x, dict):
            x = x.get(part)
        elif isinstance(x, list) and part.lstrip("-").isdigit() and -len(x) <= int(part) < len(x):
            x = x[int(part)]
        else:
            return None
    return x


def _isin(col: pd.Series, want) -> pd.Series:
    return col.isin(want if isinstance(want, list) else [want])


def select(records: Records, q: dict) -> pd.DataFrame:
    """The records a query's filters match."""
    if "suite" not in q:
        raise ClaimError("a query needs a suite")
    df = records.frame(q["suite"], q.get("file"))
    if df.empty:
        return df
    keep = pd.Series(True, index=df.index)
    status = q.get("status", "ok")
    if status != "any":
        keep &= _isin(df.status, status)
    for key in FILTERS:
        if key in q:
            keep &= _isin(df[key], q[key]) if key in df else False
    if "epochs" in q:
        keep &= _isin(df["_epochs"], [float(e) for e in (q["epochs"] if isinstance(q["epochs"], list) else [q["epochs"]])]) \
            if "_epochs" in df else False
    if "error_contains" in q:
        keep &= df.get("error", pd.Series("", index=df.index)).fillna("").astype(str).str.contains(
            q["error_contains"], regex=False)
    return df[keep]


def field_path(field) -> list[str]:
    """A query's ``field`` as path parts: a dotted string, or a list of parts for keys that hold
    a dot themselves (``[layer_info, classifier.0, params]``)."""
    if isinstance(field, list) and field and all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in field):
        return [str(p) for p in field]
    if isinstance(field, str) and field:
        return field.split(".")
    raise ClaimError(f"field {field!r}: expected a dotted path or a list of its parts")


def _samples(df: pd.DataFrame, field) -> list[float]:
    """The numbers ``field`` holds over the rows; a boolean counts 1 or 0 (its ``mean`` is a
    fraction, ``stat: n`` counts the records that have it)."""
    head, *rest = field_path(field)
    if head not in df:
        return []
    out = []
    for v in df[head]:
        v = _field(v, rest) if rest else v
        for x in v if isinstance(v, list) else [v]:  # a list field (a curve) gives each of its numbers
            if isinstance(x, bool):
                out.append(float(x))
            elif isinstance(x, (int, float)) and not math.isnan(x):
                out.append(float(x))
    return out


def _default_fmt(field, stat: str) -> str:
    field_name = ".".join(field_path(field))
    if stat in ("n", "order_changes"):
        return "d"
    if stat == "kendall_tau":
        return ".2f"
    if field_name.startswith("acc"):
        return ".2f"
    if field_name.startswith("params"):
        return ",.0f"
    if field_name == "fit_rel_error":
        return ".4f"
    if field_name == "achieved_ratio":
        return ".0f"
    return "g"


def run_query(records: Records, q: dict) -> Value:
    unknown = set(q) - QUERY_KEYS
    if unknown:
        raise ClaimError(f"unknown query key(s) {sorted(unknown)}")
    stat = q.get("stat", "mean")
    if stat not in STATS:
        raise ClaimError(f"unknown stat {stat!r} (one of {sorted(STATS)})")
    field_name = q.get("field", "acc_after_finetune")
    fmt = q.get("fmt", _default_fmt(field_name, stat))
    if "minus" in q:
        base = {k: v for k, v in q.items() if k not in ("minus", "fmt")}
        a, b = run_query(records, base), run_query(records, {**base, **q["minus"]})
        return Value(a.value - b.value, q.get("fmt", "+.2f"))
    if stat in ("order_changes", "kendall_tau"):
        return _ranking(records, q, stat, fmt)
    if "at_params" in q:
        return _at_params(records, q, stat, fmt)
    df = select(records, q)
    x = _samples(df, field_name)
    if stat == "n":
        return Value(float(len(x)), fmt, n=len(x), samples=x)
    if not x:
        raise ClaimError(f"no records with {field_name} match {_describe(q)}")
    s = pd.Series(x)
    if stat == "value" and len(x) != 1:
        raise ClaimError(f"stat 'value' needs one record, {len(x)} match {_describe(q)}")
    value = {"mean": s.mean, "ci": lambda: ci_halfwidth(x), "std": s.std, "min": s.min, "max": s.max,
             "n": lambda: len(x), "value": lambda: x[0]}[stat]()
    return Value(float(value), fmt, ci=ci_halfwidth(x), n=len(x), samples=x, collapsed=_at_chance(df, field_name))


def _at_chance(df: pd.DataFrame, field: str) -> int:
    """How many selected runs' ``field`` is an accuracy at chance, by the tables' rule
    (``bench.report_cells.collapsed_seeds``); 0 for a field that is no accuracy."""
    if not str(field).startswith("acc") or field not in df or "dataset" not in df:
        return 0
    acc = pd.DataFrame({"dataset": df.dataset, "acc": pd.to_numeric(df[field], errors="coerce")}).dropna()
    return int(collapsed_seeds(acc).sum()) if len(acc) else 0


def _describe(q: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in q.items() if k not in ("fmt",)) + "}"


def _at_params(records: Records, q: dict, stat: str, fmt: str) -> Value:
    """The label's accuracy interpolated at ``at_params`` parameters (stat mean, ci or n), or its
    rank there among every label of the (network, dataset) measured at that count (1 = best)."""
    if "label" not in q or stat not in ("mean", "ci", "n", "rank"):
        raise ClaimError("at_params needs a label and stat mean, ci, n or rank")
    where = {k: v for k, v in q.items() if k in ("suite", "file", "network", "dataset", "epochs")}
    df = select(records, {**where, "status": "any"})
    if "epochs" not in q:
        df = longest_finetune(df)
    eb = equal_budget(df, counts=[float(q["at_params"])]) if len(df) else pd.DataFrame()
    row = eb[eb.label == q["label"]] if len(eb) else eb
    if len(row) != 1 or not row.acc_mean.notna().iloc[0]:
        why = row["flag"].iloc[0] if len(row) == 1 and "flag" in row and row["flag"].iloc[0] else "not measured there"
        raise ClaimError(f"no interpolated accuracy at {q['at_params']} parameters for {_describe(q)} ({why})")
    eb, r = eb[eb.acc_mean.notna()], row.iloc[0]
    rank = 1 + int((eb.acc_mean > r.acc_mean).sum())
    value = {"mean": r.acc_mean, "ci": r.acc_ci, "n": r.seeds, "rank": rank}[stat]
    return Value(float(value), "d" if stat in ("n", "rank") else fmt, ci=float(r.acc_ci), n=int(r.seeds))


def _ranking(records: Records, q: dict, stat: str, fmt: str) -> Value:
    if not (isinstance(q.get("between"), list) and len(q["between"]) == 2):
        raise ClaimError(f"{stat} needs between: [E1, E2] (epoch counts)")
    e1, e2 = (float(e) for e in q["between"])
    df = select(records, {**{k: v for k, v in q.items() if k != "epochs"}, "epochs": [e1, e2]})
    df = df[~reference_rows(df)]
    if len(df.groupby(["network", "dataset", "budget"])) > 1:
        raise ClaimError(f"{stat} ranks the labels of one network, dataset and budget: {_describe(q)} matches several")
    field_name = q.get("field", "acc_after_finetune")
    groups = {(label, e): _samples(g, field_name) for (label, e), g in df.groupby(["label", "_epochs"])}
    labels = sorted({lab for lab, _ in groups if groups.get((lab, e1)) and groups.get((lab, e2))})
    if len(labels) < 2:
        raise ClaimError(f"{stat}: under two labels measured at both {e1:g} and {e2:g} epochs in {_describe(q)}")
    mean = {k: sum(v) / len(v) for k, v in groups.items() if v}
    if stat == "kendall_tau":
        tau = stats.kendalltau([mean[(lab, e1)] for lab in labels], [mean[(lab, e2)] for lab in labels]).statistic
        return Value(float(tau), fmt, n=len(labels))
    pairs = []
    for a, b in combinations(labels, 2):
        if (mean[(a, e1)] - mean[(b, e1)]) * (mean[(a, e2)] - mean[(b, e2)]) < 0:
            p = welch_p(groups[(a, e2)], groups[(b, e2)])
            if "separated" not in q or p < float(q["separated"]):
                pairs.append((a, b, p))
    return Value(float(len(pairs)), fmt, n=len(labels), pairs=pairs)
