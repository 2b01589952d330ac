"""How big a compressed network is: storage of pruned and factorised layers in 32-bit values,
target ratios, and a ratio as the tables show it (marked when off its target).

Why a module of its own (issue #22): sizes are counted the same way in the accuracy tables
and in the positions of the equal-budget curves.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report_frames import budget_order

#: an achieved ratio further than this (relative) from its target ratio is marked †size
SIZE_TOLERANCE = 0.10
SIZE_MARK = "†size"
#: bits of one stored value and of one CSR-like index; storage is counted in stored values
VALUE_BITS = INDEX_BITS = 32
SPARSE_COUNT = "non-zero weights"           # ``params_counted_as`` of pruning methods
SPARSE_METHODS = frozenset({"prune", "nnbcd-prune"})


def layer_storage(info: dict) -> float:
    """What one pruned layer takes to store, in 32-bit values: its values (kept weights and the
    dense biases) plus the positions of the kept weights, at the cheaper of a bitmask (one bit per
    dense weight) and a CSR-like list (one 32-bit index per kept weight). ``info``: a record's
    ``layer_info`` entry (``params``, ``params_dense``; ``total`` = dense weights, else all of
    ``params_dense`` are taken as weights)."""
    dense_weights = info.get("total", info["params_dense"])
    kept = info["params"] - (info["params_dense"] - dense_weights)
    return info["params"] + min(dense_weights, INDEX_BITS * kept) / VALUE_BITS


def is_sparse(r: dict) -> bool:
    """Whether a record counts non-zero weights (pruning), whose positions must be stored too."""
    return r.get("params_counted_as") == SPARSE_COUNT or r.get("method") in SPARSE_METHODS


def record_storage(r: dict) -> float:
    """Storage of a record's compressed layers in 32-bit values: its parameters for a
    factorisation, values + index (``layer_storage``) per pruned layer; without ``layer_info``,
    the compressed layers taken as one layer."""
    params = float(r.get("params_compressed_layers", np.nan))
    if not is_sparse(r):
        return params
    layers = r.get("layer_info")
    if not isinstance(layers, dict) or not layers:
        layers = {"all": {"params": params, "params_dense": float(r.get("params_dense_layers", np.nan))}}
    return float(sum(layer_storage(info) for info in layers.values()))


def network_ratio(r: dict) -> float:
    """The whole network's compression: its dense parameter count over the compressed network's
    (``params_total``, the layers left dense included); NaN for a record without it."""
    total, mine, dense = (float(r.get(k, np.nan)) for k in ("params_total", "params_compressed_layers",
                                                               "params_dense_layers"))
    return (total - mine + dense) / total if total > 0 else np.nan


def target_ratios(frame: pd.DataFrame) -> pd.Series:
    """Each record's target compression ratio: ``target_ratio``, else read from an "xN" budget."""
    from_budget = frame.budget.map(lambda b: budget_order(b) if str(b).startswith("x") else np.nan)
    if "target_ratio" not in frame:
        return from_budget.astype(float)
    return pd.to_numeric(frame.target_ratio, errors="coerce").fillna(from_budget).astype(float)


def ratio_text(ratio: float, off: bool) -> str:
    """An achieved ratio as a table shows it, marked ``SIZE_MARK`` when off its target."""
    return f"{ratio:.1f}x" + (f" {SIZE_MARK}" if off else "")
