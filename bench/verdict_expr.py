"""Values of ``results/claims.yaml`` claims and the safe expression language over them.

Split out of ``bench.verdicts`` (which documents the claims format): a ``Value`` (a number with its
format, CI, samples) and ``parse_expression`` / ``evaluate``, the ``ast`` whitelist the claims'
``values`` strings and ``expect`` relations are written in. Nothing here reads records.
"""
from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass, field

from bench.errors import InputError
from bench.report_cells import chance_mark, ci_shown, format_acc


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
    collapsed: int = 0  # samples at chance (accuracies: ``bench.report_cells.collapsed_seeds``)

    def render(self, spec: str) -> str:
        if spec == "pm":  # the tables' seed rule (bench.report.SEED_RULE): no CI below 3 seeds or when bimodal
            shown = format_acc(self.value, self.ci if ci_shown(self.n, self.n, self.collapsed) else math.nan)
            return shown + chance_mark(self.n, self.collapsed)
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
