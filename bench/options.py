"""``number``: one checked numeric option of a compressor, for its ``__init__``. Suites are
validated by constructing each method with its options (``bench.suite_check``), so a range
checked here is refused, naming the option and its valid range, before any baseline trains."""
from __future__ import annotations

import math
import numbers
from typing import Any


def number(method: str, name: str, value: Any, *, integer: bool = False, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False) -> int | float:
    """``value`` as an int (``integer``) or a finite float within ``lo``..``hi`` (``lo``
    excluded when ``lo_open``); else ValueError ``"METHOD: NAME VALUE: expected ..."``."""
    kind = "an integer" if integer else "a finite number"
    bounds = ([f"> {lo:g}" if lo_open else f">= {lo:g}"] if lo is not None else []) + \
             ([f"<= {hi:g}"] if hi is not None else [])
    what = f"{kind} {' and '.join(bounds)}".strip()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        raise ValueError(f"{method}: {name} {value!r}: expected {what}")
    return int(value) if integer else float(value)
