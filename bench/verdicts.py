"""Verdicts that check themselves: every quantitative statement of ``results/README.md`` is a
claim in ``results/claims.yaml``, computed from the records, checked, and rendered into the
README between ``<!-- claims:begin NAME -->`` and ``<!-- claims:end NAME -->``.

claims.yaml maps a block name to a list of claims::

    records:                                  # the README block it renders into
      - id: fc2-128x-tt-vs-tucker              # unique, for messages
        where: {suite: mnist, network: fc2, budget: x128, epochs: 3}   # defaults of its queries
        values:                               # named values, in order
          tt: {label: tt}                     # a query (see below)
          tucker: {label: tucker}
          p: {welch: [tt, tucker]}            # Welch p-value of two earlier queries' samples
          gap: tt - tucker                    # an expression over earlier values
          target: {expr: "0.5", fmt: .1f}     # the same, with its format
        expect: [tt > tucker, p < 0.05]       # relations that must hold (one string or a list)
        text: "tt {tt:pm} is ahead of tucker {tucker:pm} (p = {p})."

A query selects the ``ok`` records (``bench.report.records_frame``: latest per key, current
baseline) of ``results/<suite>/runs.jsonl`` (``fit_runs.jsonl`` when there is no runs file, or
``file:``) and reduces one field over them:

* filters: ``network``, ``dataset``, ``label``, ``method``, ``budget``, ``seed``, ``epochs``
  (``finetune.epochs``): a value or a list of values; ``status`` (default ``ok``; ``any``);
  ``error_contains``: a substring of the record's ``error``;
* ``field``: a column, or a dotted path into it (``extras.nnbcd_sweeps``,
  ``extras.nnbcd_val_acc.10``, ``.-1`` the last); a list (a curve) gives each of its numbers;
  default ``acc_after_finetune``;
* ``stat``: ``mean`` (default), ``ci`` (95 % Student-t half-width), ``std``, ``min``, ``max``,
  ``n`` (numbers found; 0 when nothing matches), ``value`` (exactly one number must match);
  any other stat fails when nothing matches;
* ``minus: {overrides}``: the stat minus the same query's stat with the overrides (a gain);
* ``at_params: N`` with a ``label``: its accuracy interpolated at N parameters
  (``bench.report.equal_budget``, at the longest fine-tuning unless ``epochs``); ``stat: rank``
  its rank there among the (network, dataset)'s labels, 1 = best;
* ranking stats over every non-dense label that matches, ``between: [E1, E2]`` epoch counts:
  ``order_changes``, the pairs whose order of means differs between E1 and E2 (with
  ``separated: alpha``: only pairs a Welch test separates at E2, p < alpha), and
  ``kendall_tau`` of the E1 ranking against the E2 one;
* ``fmt``: how ``{name}`` renders (a format spec; defaults: accuracies ``.2f``, parameters
  ``,.0f``, fit errors ``.4f``, counts ``d``, p-values ``.3g``, expressions ``.2f``, gains
  (``minus``) ``+.2f``, anything else ``g``).

Expressions (``values`` strings and ``expect``) are parsed with ``ast`` and evaluated by a
whitelist: names of values, numbers, ``+ - * /``, comparisons, ``and or not``, ``abs min max``
and ``ci(name)`` / ``n(name)``; anything else is rejected, nothing is ``eval``-ed.

In ``text``, ``{name}`` renders a value with its format; ``{name:pm}`` a mean as ``mean ± ci``
(``bench.report.format_acc``), ``{name:ci}`` its CI, ``{name:n}`` its sample count,
``{name:pairs}`` the pairs of an ``order_changes`` query; any other spec is a Python format
spec (``{gain:+.2f}``); ``{{`` and ``}}`` are literal braces. A block's text is its claims'
texts in order. ``python -m plots verdicts --check`` (``--write``) checks (rewrites) the README's
blocks; ``tests/test_verdicts.py`` runs the check on the committed records.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import string
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from scipy import stats

from bench.errors import InputError
from bench.report import (MIN_CI_SEEDS, ci_halfwidth, equal_budget, finetune_epochs, format_acc, longest_finetune,
                          records_frame, reference_rows, welch_p)

FILTERS = ("network", "dataset", "label", "method", "budget", "seed")
QUERY_KEYS = set(FILTERS) | {"suite", "file", "epochs", "status", "error_contains", "field", "stat", "minus",
                             "at_params", "between", "separated", "fmt", "welch"}
STATS = {"mean", "ci", "std", "min", "max", "n", "value", "order_changes", "kendall_tau", "rank"}
BLOCK_RE = re.compile(r"<!-- claims:begin (\S+) -->\n(.*?)<!-- claims:end \1 -->", re.S)


class ClaimError(InputError, ValueError):
    """A claim that cannot be computed: a bad definition, or records that do not have its values."""


@dataclass
class Value:
    value: float
    fmt: str = ".2f"
    ci: float = math.nan
    n: int = 0
    samples: list[float] | None = None
    pairs: list[tuple[str, str, float]] = field(default_factory=list)

    def render(self, spec: str) -> str:
        if spec == "pm":  # the tables' seed rule (bench.report.SEED_RULE): no CI below 3 seeds
            return format_acc(self.value, self.ci if self.n >= MIN_CI_SEEDS else math.nan)
        if spec == "ci":
            return _fmt(self.ci, ".2f")
        if spec == "n":
            return str(self.n)
        if spec == "pairs":
            return ", ".join(f"{a} / {b}" + ("" if math.isnan(p) else f" (p = {p:.3g})") for a, b, p in self.pairs) or "none"
        return _fmt(self.value, spec or self.fmt)


def _fmt(x: float, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if spec.endswith("d"):
        x = int(round(x))
    return format(x, spec)


# -- safe expressions --------------------------------------------------------------------------

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCS = {"abs": abs, "min": min, "max": max}
_OF_VALUE = {"ci": lambda v: v.ci, "n": lambda v: v.n}


def parse_expression(text: str) -> ast.Expression:
    """The expression's tree, checked against the whitelist (ValueError otherwise)."""
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an expression: {text!r} ({e.msg})") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
                               ast.BinOp, ast.Compare, ast.Name, ast.Load, *_BIN, *_CMP))
        if isinstance(node, ast.Constant):
            ok = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, ast.Call):
            ok = (isinstance(node.func, ast.Name) and node.func.id in {*_FUNCS, *_OF_VALUE} and not node.keywords
                  and (node.func.id not in _OF_VALUE or (len(node.args) == 1 and isinstance(node.args[0], ast.Name))))
        if not ok:
            raise ValueError(f"{text!r}: {type(node).__name__} is not allowed (names, numbers, + - * /, "
                             "comparisons, and/or/not, abs/min/max, ci(name), n(name))")
    return tree


def evaluate(text: str, values: dict[str, Value]) -> float | bool:
    """The value of a whitelisted expression over ``values`` (see ``parse_expression``)."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return lookup(node.id).value
        if isinstance(node, ast.UnaryOp):
            x = ev(node.operand)
            return (not x) if isinstance(node.op, ast.Not) else (-x if isinstance(node.op, ast.USub) else +x)
        if isinstance(node, ast.BinOp):
            return _BIN[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.BoolOp):
            parts = [ev(v) for v in node.values]
            return all(parts) if isinstance(node.op, ast.And) else any(parts)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Call):
            name = node.func.id
            if name in _OF_VALUE:
                return _OF_VALUE[name](lookup(node.args[0].id))
            return _FUNCS[name](*(ev(a) for a in node.args))
        raise ValueError(f"{type(node).__name__} is not allowed")  # parse_expression already refused it

    def lookup(name: str) -> Value:
        if name not in values:
            raise ClaimError(f"{text!r}: no value named {name!r}")
        return values[name]

    try:
        return ev(parse_expression(text))
    except ZeroDivisionError:
        return math.nan


# -- queries -------------------------------------------------------------------------------------

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
            df = records_frame(path)
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


def _samples(df: pd.DataFrame, field_name: str) -> list[float]:
    head, *rest = field_name.split(".")
    if head not in df:
        return []
    out = []
    for v in df[head]:
        v = _field(v, rest) if rest else v
        for x in v if isinstance(v, list) else [v]:  # a list field (a curve) gives each of its numbers
            if isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x):
                out.append(float(x))
    return out


def _default_fmt(field_name: str, stat: str) -> str:
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
    return Value(float(value), fmt, ci=ci_halfwidth(x), n=len(x), samples=x)


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


# -- claims --------------------------------------------------------------------------------------

@dataclass
class Verdict:
    block: str
    id: str
    ok: bool
    text: str
    failures: list[str]
    values: dict[str, Value]


def check_claim(records: Records, claim: dict, block: str = "") -> Verdict:
    """Compute a claim's values, test its relations and render its text (failures are listed,
    never raised: a claim the records stop supporting is a failed verdict)."""
    cid = str(claim.get("id", "?"))
    values: dict[str, Value] = {}
    failures: list[str] = []
    try:
        unknown = set(claim) - {"id", "where", "values", "expect", "text"}
        if unknown:
            raise ClaimError(f"unknown claim key(s) {sorted(unknown)}")
        where = claim.get("where") or {}
        for name, spec in (claim.get("values") or {}).items():
            if isinstance(spec, dict) and "welch" in spec:
                a, b = (values.get(n) for n in spec["welch"])
                if a is None or b is None or a.samples is None or b.samples is None:
                    raise ClaimError(f"{name}: welch needs two earlier queries, got {spec['welch']}")
                values[name] = Value(welch_p(a.samples, b.samples), spec.get("fmt", ".3g"))
            elif isinstance(spec, dict) and "expr" in spec:
                values[name] = Value(float(evaluate(str(spec["expr"]), values)), spec.get("fmt", ".2f"))
            elif isinstance(spec, dict):
                values[name] = run_query(records, {**where, **spec})
            else:
                values[name] = Value(float(evaluate(str(spec), values)), ".2f")
        expect = claim.get("expect") or []
        for rel in [expect] if isinstance(expect, str) else expect:
            if not evaluate(str(rel), values):
                shown = ", ".join(f"{n} = {values[n].render('')}" for n in _names(str(rel)) if n in values)
                failures.append(f"{rel} does not hold ({shown})")
        text = render_text(str(claim.get("text", "")), values)
    except (ClaimError, ValueError, KeyError, TypeError) as e:
        failures.append(str(e))
        text = ""
    return Verdict(block, cid, not failures, text, failures, values)


def _names(expr: str) -> list[str]:
    return [n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)]


def render_text(template: str, values: dict[str, Value]) -> str:
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or conversion:
            raise ClaimError(f"placeholder {{{name}}} must be a plain value name")
        if name not in values:
            raise ClaimError(f"placeholder {{{name}}}: no value named {name!r}")
        out.append(values[name].render(spec or ""))
    return "".join(out)


def load_claims(path: Path | str) -> dict[str, list[dict]]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: a mapping of block name to a list of claims")
    ids = [c.get("id") for v in data.values() for c in v]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate claim ids {dup}")
    return data


def check_all(results: Path | str, claims: dict[str, list[dict]]) -> list[Verdict]:
    records = Records(results)
    return [check_claim(records, c, block) for block, cs in claims.items() for c in cs]


def render_blocks(verdicts: list[Verdict]) -> dict[str, str]:
    """Block name -> its rendered text (the claims' texts in order, each ending in a newline)."""
    blocks: dict[str, str] = {}
    for v in verdicts:
        text = v.text if v.text.endswith("\n") else v.text + "\n"
        blocks[v.block] = blocks.get(v.block, "") + text
    return blocks


def readme_blocks(readme: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in BLOCK_RE.finditer(readme)}


def stale_blocks(readme: str, blocks: dict[str, str]) -> list[str]:
    """Messages for each block whose README text differs from its rendering (or is missing)."""
    have = readme_blocks(readme)
    out = [f"block {b!r}: not in the README (add <!-- claims:begin {b} --> / <!-- claims:end {b} -->)"
           for b in blocks if b not in have]
    out += [f"block {b!r}: stale (run python -m plots verdicts --write)" for b in blocks if b in have and have[b] != blocks[b]]
    out += [f"block {b!r}: in the README but not in the claims" for b in have if b not in blocks]
    return out


def write_blocks(readme: str, blocks: dict[str, str]) -> str:
    return BLOCK_RE.sub(lambda m: f"<!-- claims:begin {m.group(1)} -->\n{blocks.get(m.group(1), m.group(2))}"
                                  f"<!-- claims:end {m.group(1)} -->", readme)


def run(results: Path | str = "results", claims: Path | str | None = None, readme: Path | str | None = None,
        write: bool = False, out=print) -> int:
    """Check every claim (and, unless ``write``, that the README blocks are current); with
    ``write``, rewrite the README blocks. 0 when every claim holds and the README is current."""
    results = Path(results)
    claims_path = Path(claims) if claims else results / "claims.yaml"
    readme_path = Path(readme) if readme else results / "README.md"
    verdicts = check_all(results, load_claims(claims_path))
    bad = [v for v in verdicts if not v.ok]
    for v in bad:
        out(f"FAIL {v.block}/{v.id}: " + "; ".join(v.failures))
    blocks = render_blocks(verdicts)
    text = readme_path.read_text()
    if write:
        new = write_blocks(text, blocks)
        if new != text:
            readme_path.write_text(new)
            out(f"wrote {readme_path}")
        problems = [s for s in stale_blocks(new, blocks) if "stale" not in s]
    else:
        problems = stale_blocks(text, blocks)
    for s in problems:
        out(s)
    out(f"{len(verdicts) - len(bad)} of {len(verdicts)} claims hold")
    return 1 if bad or problems else 0
