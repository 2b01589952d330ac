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
  ``extras.nnbcd_val_acc.10``, ``.-1`` the last), or the path as a list of parts when a key
  holds a dot (``[layer_info, classifier.0, params]``); a list (a curve) gives each of its
  numbers, a boolean counts 1 or 0 (``lr_tuning.pick_at_edge`` with ``stat: mean``: the
  fraction at an edge); default ``acc_after_finetune``;
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
by the tables' seed rule (no CI under 3 samples; accuracies with runs at chance marked ``‡
bimodal: c/n at chance``, without a CI, or ``‡ at chance``), ``{name:ci}`` its CI, ``{name:n}`` its sample count,
``{name:pairs}`` the pairs of an ``order_changes`` query; any other spec is a Python format
spec (``{gain:+.2f}``); ``{{`` and ``}}`` are literal braces. A block's text is its claims'
texts in order. ``python -m plots verdicts --check`` (``--write``) checks (rewrites) the README's
blocks; ``tests/report/test_verdicts.py`` runs the check on the committed records.

This module checks claims and keeps the README blocks; values and expressions are
``bench.verdict_expr``, record queries ``bench.verdict_query``.
"""
from __future__ import annotations

import ast
import re
import string
from dataclasses import dataclass
from pathlib import Path

from bench.errors import InputError, existing_file
from bench.report import welch_p
from bench.suite_yaml import parse_yaml, read_text
# the values, expressions and queries live in their own modules; these names stay importable from here
from bench.verdict_expr import ClaimError, Value, evaluate, parse_expression  # noqa: F401
from bench.verdict_query import FILTERS, QUERY_KEYS, STATS, Records, run_query, select  # noqa: F401

BLOCK_RE = re.compile(r"<!-- claims:begin (\S+) -->\n(.*?)<!-- claims:end \1 -->", re.S)


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


class VerdictsInputError(InputError, ValueError):
    """A claims file or README that cannot be read as one: exit 2, one line."""


def load_claims(path: Path | str) -> dict[str, list[dict]]:
    path = existing_file(Path(path), "claims file", VerdictsInputError)
    data = parse_yaml(read_text(path), str(path)) or {}
    if (not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values())
            or not all(isinstance(c, dict) for v in data.values() for c in v)):
        raise VerdictsInputError(f"{path}: expected a mapping of block name to a list of claims")
    ids = [c.get("id") for v in data.values() for c in v]
    dup = sorted({str(i) for i in ids if ids.count(i) > 1})
    if dup:
        raise VerdictsInputError(f"{path}: duplicate claim ids {dup}")
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
    text = read_text(existing_file(readme_path, "README", VerdictsInputError))
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
