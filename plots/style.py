"""Shared figure style: one colour and marker per method in every figure, readable tick labels
on every axis, and reproducible files (same records -> byte-identical PNG/PDF)."""
from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

# TrueType (Type 42) fonts: journals reject Type 3; svg.hashsalt keeps SVG ids stable too
matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "tnbench"})

_TAB20 = [matplotlib.colors.to_hex(c) for c in plt.get_cmap("tab20").colors]
_MARKERS = ["o", "^", "v", "D", "*", "P", "X", "<", ">", "h", "s", "p", "d", "H", "8"]
# the registered methods: dark tab20 shades and distinct markers, fixed forever
_FIXED = {
    "dense": ("black", "s"), "svd": (_TAB20[0], "o"), "tt": (_TAB20[2], "^"), "tucker": (_TAB20[4], "v"),
    "cp": (_TAB20[8], "D"), "adtn": (_TAB20[6], "*"), "alds": (_TAB20[10], "P"), "alds-svd": (_TAB20[12], "X"),
    "nnbcd-tt": (_TAB20[14], "<"), "nnbcd-prune": (_TAB20[16], ">"), "prune": (_TAB20[18], "h"),
    # the labelled variants of the committed suites (adtn-order)
    "adtn-backward": ("#843c39", "p"), "adtn-forward": ("#393b79", "d"), "adtn-all": ("#637939", "8"),
}
# other labels: a colour of tab20b (its lightest shades left out) and a marker, by a stable hash
_HASHED = [matplotlib.colors.to_hex(c) for i, c in enumerate(plt.get_cmap("tab20b").colors) if i % 4 != 3]


def method_style(label: str, method: str | None = None) -> dict:
    """Colour/marker for a method label, a function of the label alone (``method`` is accepted
    for callers' convenience): registered methods have fixed styles; other labels (variants such
    as adtn-[order], plugins) take a colour and a marker from a stable hash of the label."""
    if label in _FIXED:
        color, marker = _FIXED[label]
    else:
        h = zlib.crc32(label.encode())
        color, marker = _HASHED[h % len(_HASHED)], _MARKERS[(h // len(_HASHED)) % len(_MARKERS)]
    return {"color": color, "marker": marker}


def plain_number(x: float, _pos=None) -> str:
    """Short tick text: 2, 0.05, 300, 2k, 1.5M (never 10^x nor scientific)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale * 10 or (abs(x) >= scale and suffix != "k"):
            return f"{x / scale:g}{suffix}"
    if 0 < abs(x) < 1e-3:
        mantissa, exponent = f"{x:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{x:g}"


def clamp_percent(ax) -> None:
    """Keep an accuracy axis within 0-100 % (wide CIs of few seeds would stretch it past)."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.0), min(hi, 100.5))


def log_ticks(axis) -> None:
    """Log axis with plain labels; where fewer than two decades fall in view, the 2x/5x (or every)
    minor tick is labelled too, so an axis spanning under a decade still reads."""
    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0:
        return
    majors = np.floor(np.log10(hi)) - np.ceil(np.log10(lo)) + 1
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(plain_number))
    if majors >= 2:
        axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
        axis.set_minor_formatter(NullFormatter())
        return
    subs = (2.0, 5.0) if np.log10(hi / lo) >= 0.6 else tuple(float(s) for s in range(2, 10))
    axis.set_minor_locator(LogLocator(base=10, subs=subs))
    axis.set_minor_formatter(FuncFormatter(plain_number))
    shown = [t for t in np.r_[axis.get_majorticklocs(), axis.get_minorticklocs()] if lo <= t <= hi]
    if len(shown) < 2:  # narrower still: three ticks spread over the view, rounded
        ticks = [float(f"{t:.2g}") for t in np.geomspace(lo * 1.02, hi / 1.02, 3)]
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(FixedLocator([]))


def _visible_labels(axis, renderer):
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for ticks, locs in ((axis.get_major_ticks(), axis.get_majorticklocs()),
                        (axis.get_minor_ticks(), axis.get_minorticklocs())):
        for tick, loc in zip(ticks, locs):
            label = tick.label1
            if lo <= loc <= hi and label.get_visible() and label.get_text():
                out.append((loc, label.get_window_extent(renderer)))
    return sorted(out, key=lambda t: t[0])


def tick_label_boxes(axis, renderer) -> list:
    """Display boxes of the tick labels drawn on ``axis`` (after a draw), in axis order."""
    return [box for _, box in _visible_labels(axis, renderer)]


def thin_tick_labels(fig) -> None:
    """Drop tick labels that would overlap a neighbour (greedy along each axis), keeping the
    ticks themselves; run after the layout is final."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            labels = _visible_labels(axis, renderer)
            kept, last = [], None
            for loc, box in labels:
                if last is None or not box.padded(1).overlaps(last):
                    kept.append(loc)
                    last = box
            if len(kept) == len(labels):
                continue
            lo, hi = sorted(axis.get_view_interval())
            every = [t for t in np.r_[axis.get_majorticklocs(), axis.get_minorticklocs()] if lo <= t <= hi]
            fmt = axis.get_major_formatter() if axis.get_scale() != "log" else FuncFormatter(plain_number)
            axis.set_major_locator(FixedLocator(kept))
            axis.set_major_formatter(fmt)
            axis.set_minor_locator(FixedLocator([t for t in every if t not in kept]))
            axis.set_minor_formatter(NullFormatter())
    fig.canvas.draw()


def save_figure(fig, stem: Path, tight: bool = False) -> list[Path]:
    """``stem``.png and .pdf, log axes labelled (``log_ticks``), without overlapping tick labels
    and without dates, so unchanged records re-render to identical bytes; closes the figure.
    ``tight``: run ``tight_layout`` once the tick labels are known."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                log_ticks(axis)
    if tight:
        fig.tight_layout()
    thin_tick_labels(fig)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return paths


#: figure sizes (inches) that fit one column / two columns of a paper
ONE_COLUMN = (3.4, 2.6)
TWO_COLUMN = (7.0, 2.8)
