"""One colour and marker per method, the same in every figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

_FIXED = {
    "dense": ("black", "s"), "svd": ("#1f77b4", "o"), "tt": ("#ff7f0e", "^"), "tucker": ("#2ca02c", "v"),
    "cp": ("#9467bd", "D"), "adtn": ("#d62728", "*"), "alds": ("#8c564b", "P"), "alds-svd": ("#e377c2", "X"),
    "nnbcd-tt": ("#7f7f7f", "<"), "nnbcd-prune": ("#bcbd22", ">"), "prune": ("#17becf", "h"),
}
_EXTRA_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]
_EXTRA_MARKERS = ["p", "d", "8", "H", "1", "2", "3", "4"]


def method_style(label: str, method: str | None = None) -> dict:
    """Colour/marker for a method label; variants of a method (adtn-forward) share its colour."""
    base = method or label
    if label in _FIXED:
        color, marker = _FIXED[label]
    elif base in _FIXED:
        color, _ = _FIXED[base]
        marker = _EXTRA_MARKERS[sum(map(ord, label)) % len(_EXTRA_MARKERS)]
    else:
        h = sum(map(ord, label))
        color, marker = _EXTRA_COLORS[h % len(_EXTRA_COLORS)], _EXTRA_MARKERS[h % len(_EXTRA_MARKERS)]
    return {"color": color, "marker": marker}


#: figure sizes (inches) that fit one column / two columns of a paper
ONE_COLUMN = (3.4, 2.6)
TWO_COLUMN = (7.0, 2.8)
