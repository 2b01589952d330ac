"""A suite's own figures: accuracy vs achieved parameters, weight-space fit error vs parameters."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bench.report import reference_rows
from plots.style import ONE_COLUMN, TWO_COLUMN, clamp_percent, method_style, save_figure


def plot_accuracy_vs_params(summary: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    """``summary``: rows of ``accuracy_summary`` (params, acc_mean, acc_ci, label, method);
    error bars are 95 % CIs over seeds."""
    fig, ax = plt.subplots(figsize=(ONE_COLUMN[0] * 1.4, ONE_COLUMN[1] * 1.4))
    ref = reference_rows(summary)
    dense = summary[ref]
    for label, g in summary[~ref].groupby("label", sort=True):
        g = g.sort_values("params")
        ax.errorbar(g.params, g.acc_mean, yerr=g.acc_ci.fillna(0), label=label, capsize=2, lw=1.2, ms=4,
                    **method_style(label, g.method.iloc[0]))
    if len(dense):
        ax.axhline(dense.acc_mean.iloc[0], color="black", ls="--", lw=1,
                   label=f"dense ({dense.acc_mean.iloc[0]:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters of the compressed layers (achieved)")
    ax.set_ylabel("test accuracy (%), 95 % CI")
    clamp_percent(ax)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, stem)


def plot_fit_error(per_layer: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    """``per_layer``: rows (layer, label, method, params, fit_mean); one panel per layer, log-log."""
    layers = list(dict.fromkeys(per_layer.layer))
    cols = min(len(layers), 4)
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(TWO_COLUMN[0], TWO_COLUMN[1] * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        sub = per_layer[per_layer.layer == layer]
        for label, g in sub.groupby("label", sort=True):
            g = g.sort_values("params")
            ax.plot(g.params, g.fit_mean.clip(lower=1e-8), label=label, lw=1.2, ms=4,
                    **method_style(label, g.method.iloc[0]))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{layer} ({int(sub.params_dense.iloc[0]):,} params)", fontsize=8)
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("relative error ‖W−Ŵ‖/‖W‖")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=min(len(labels), 6),
               bbox_to_anchor=(0.5, 1.02 + 0.05 * (-(-len(labels) // 6) - 1)), frameon=False)
    fig.suptitle(title, fontsize=9, y=1.08 + 0.05 * (-(-len(labels) // 6) - 1))
    return save_figure(fig, stem, tight=True)
