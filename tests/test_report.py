"""bench.report statistics (CI, folding, equal-budget interpolation, baseline fingerprints) and
the reproducibility/readability of the figures in plots/."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bench.records import append_record
from bench.report import (accuracy_summary, baseline_split, ci_halfwidth, equal_budget, format_acc, longest_finetune,
                          records_frame, welch_p)
from plots import style
from plots.equal_budget import equal_budget_view
from plots.suite_report import write_reports


def _rec(key, method="svd", budget="x2", seed=0, acc=90.0, params=500, **kw):
    return {"key": key, "status": "ok", "network": "fc2", "dataset": "mnist", "suite": "s", "options": {},
            "method": method, "label": method, "budget": budget, "seed": seed, "acc_after_finetune": acc,
            "acc_before_finetune": acc - 10, "acc_dense": 98.0, "params_compressed_layers": params,
            "params_dense_layers": 1000, "achieved_ratio": 1000 / params, "fit_rel_error": 0.5, "flops": 1e5,
            "knobs": {"fc1": params}, "layer_info": {}, **kw}


def test_ci_halfwidth_of_three_seeds_is_student_t():
    # mean 98, sd 1: t_{0.975, 2} = 4.302653 -> 4.302653 / sqrt(3)
    assert ci_halfwidth([97.0, 98.0, 99.0]) == pytest.approx(2.4841377, abs=1e-6)
    assert format_acc(98.0, ci_halfwidth([97.0, 98.0, 99.0])) == "98.00 ± 2.48"
    assert math.isnan(ci_halfwidth([97.0])) and format_acc(97.0, ci_halfwidth([97.0])) == "97.00"
    s = accuracy_summary(pd.DataFrame([_rec(f"k{i}", seed=i, acc=a) for i, a in enumerate((97.0, 98.0, 99.0))]))
    assert s.acc_ci.iloc[0] == pytest.approx(2.4841377, abs=1e-6) and s.seeds.iloc[0] == 3


def test_saturated_budgets_fold_into_the_smallest(tmp_path):
    recs = []
    for seed in (0, 1):
        recs += [_rec(f"a{seed}", budget="x2", seed=seed, params=500, acc=95.0 + seed),
                 _rec(f"b{seed}", budget="x10", seed=seed, params=100, acc=80.0 + seed),
                 # x100: beyond the method's reach, recorded as a copy of x10 (same_as)
                 {**_rec(f"c{seed}", budget="x100", seed=seed, params=100, acc=80.0 + seed), "same_as": f"b{seed}"},
                 # x1000: run again (no same_as) but the same knobs and parameters
                 _rec(f"d{seed}", budget="x1000", seed=seed, params=100, acc=80.0 + seed)]
    s = accuracy_summary(pd.DataFrame(recs)).set_index("budget")
    assert list(s.index) == ["x2", "x10"]
    assert s.loc["x10", "folded"] == "x100, x1000" and s.loc["x2", "folded"] == ""
    assert s.loc["x10", "acc_mean"] == 80.5 and s.loc["x10", "seeds"] == 2
    # a budget whose allocation differs on one seed only is not folded
    recs.append(_rec("e0", budget="x5000", seed=0, params=100, acc=80.0))
    recs.append(_rec("e1", budget="x5000", seed=1, params=90, acc=70.0, knobs={"fc1": 90}))
    assert "x5000" in set(accuracy_summary(pd.DataFrame(recs)).budget)
    for r in recs[:-2]:
        append_record(tmp_path / "s" / "runs.jsonl", r)
    write_reports(tmp_path / "s")
    table = (tmp_path / "s" / "table.md").read_text()
    assert table.count("| svd |") == 2 and "x100, x1000" in table and "95 % CI" in table


def _two_methods():
    """Method a at 100 and 1000 params, b at 200 and 10000, three seeds each."""
    recs = []
    for seed, d in enumerate((-1.0, 0.0, 1.0)):
        recs += [_rec(f"a100-{seed}", "a", "x10", seed, 60.0 + d, 100), _rec(f"a1k-{seed}", "a", "x1", seed, 90.0 + d, 1000),
                 _rec(f"b200-{seed}", "b", "x5", seed, 50.0 + d, 200),
                 _rec(f"b10k-{seed}", "b", "x0.1", seed, 95.0 + 3 * d, 10000)]
    return pd.DataFrame(recs)


def test_equal_budget_interpolates_log_linearly_and_never_extrapolates():
    counts = [100, 316.22776601683796, 1000, 2000]
    eb = equal_budget(_two_methods(), counts=counts).set_index(["label", "params"])
    # a: log-midpoint of 100 and 1000 -> mean of 60 and 90; seeds shift by -1, 0, 1
    assert eb.loc[("a", counts[1]), "acc_mean"] == pytest.approx(75.0)
    assert eb.loc[("a", counts[1]), "acc_ci"] == pytest.approx(ci_halfwidth([74.0, 75.0, 76.0]))
    assert np.isnan(eb.loc[("a", 2000), "acc_mean"]) and eb.loc[("a", 2000), "seeds"] == 0
    assert np.isnan(eb.loc[("b", 100), "acc_mean"])                   # below b's smallest measurement
    frac = np.log(1000 / 200) / np.log(10000 / 200)
    assert eb.loc[("b", 1000), "acc_mean"] == pytest.approx(50 + frac * 45)
    # at 1000: a (90 ± 1) is ahead of b (about 70) -> significant; at 2000 b is alone
    assert eb.loc[("a", 1000), "best"] and not eb.loc[("a", 1000), "not_significant"]
    assert eb.loc[("a", 1000), "p_value"] == pytest.approx(welch_p([89, 90, 91], eb.loc[("b", 1000), "acc_mean"]
                                                                   + (1 + 2 * frac) * np.array([-1, 0, 1])))
    assert eb.loc[("b", 2000), "best"] and not eb.loc[("b", 2000), "not_significant"]


def test_equal_budget_marks_a_best_not_significantly_ahead():
    recs = _two_methods()
    recs.loc[recs.key.str.startswith("a1k"), "acc_after_finetune"] = [70.0, 90.0, 99.0]  # ahead, but noisy
    eb = equal_budget(recs, counts=[1000])
    best = eb[eb.best].iloc[0]
    assert best.label == "a" and best.not_significant and best.p_value >= 0.05
    assert best.p_value == pytest.approx(welch_p([70.0, 90.0, 99.0], eb[eb.label == "b"].acc_mean.iloc[0]
                                                 + (1 + 2 * np.log(5) / np.log(50)) * np.array([-1, 0, 1])))
    view = equal_budget_view(eb)
    assert view.loc[0, "a"] == f"**{format_acc(best.acc_mean, best.acc_ci)}** †"
    assert not view.loc[0, "b"].startswith("**") and view.loc[0, "params"] == "1,000"


def test_equal_budget_default_grid_spans_the_overlap():
    eb = equal_budget(_two_methods(), points=5)
    assert eb.params.min() == 200 and eb.params.max() == 1000  # where a (100-1000) and b (200-10000) overlap


def test_records_of_an_older_baseline_are_left_out_and_said(tmp_path):
    path = tmp_path / "s" / "runs.jsonl"
    append_record(path, _rec("old", seed=0, acc=50.0, baseline_fingerprint="aaa"))
    append_record(path, _rec("old2", budget="x10", seed=0, params=100, acc=40.0, baseline_fingerprint="aaa"))
    append_record(path, _rec("new", budget="x4", seed=0, params=250, acc=91.0, baseline_fingerprint="bbb"))
    append_record(path, _rec("legacy", seed=1, acc=92.0))   # older records lack the field: one unknown baseline
    append_record(path, _rec("legacy2", budget="x10", seed=1, params=100, acc=70.0))
    kept, left = baseline_split(records_frame(path, all_baselines=True))
    assert sorted(left.key) == ["old", "old2"] and sorted(kept.key) == ["legacy", "legacy2", "new"]
    assert sorted(records_frame(path).key) == ["legacy", "legacy2", "new"]
    # a re-run on the old baseline makes it the current one again
    append_record(path, _rec("old", seed=0, acc=51.0, baseline_fingerprint="aaa"))
    assert sorted(baseline_split(records_frame(path, all_baselines=True))[1].key) == ["new"]
    write_reports(tmp_path / "s")
    assert "1 record(s) left out: made on an older dense baseline" in (tmp_path / "s" / "table.md").read_text()


# ---- figures -------------------------------------------------------------------------------

@pytest.fixture
def kept_figures(monkeypatch):
    """Figures ``save_figure`` would close, kept open for inspection."""
    figs, close = [], plt.close
    monkeypatch.setattr(style.plt, "close", figs.append)
    yield figs
    for f in figs:
        close(f)


def _check_tick_labels(fig):
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            boxes = style.tick_label_boxes(axis, renderer)
            assert len(boxes) >= 2, f"{ax.get_title()}: {axis.axis_name} axis has {len(boxes)} tick labels"
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), f"{ax.get_title()}: overlapping {axis.axis_name} tick labels"


def test_narrow_log_axes_get_labels_and_no_overlap(tmp_path, kept_figures):
    from plots.accuracy import plot_fit_error
    from plots.paper import figure_accuracy

    s = accuracy_summary(pd.DataFrame([_rec(f"k{p}", "svd", f"x{p}", 0, 80 + p / 100, p) for p in (420, 520, 640)]
                                      + [_rec("t", "tt", "x3", 0, 85.0, 450)]))
    figure_accuracy(s, "narrow", tmp_path / "narrow")              # under a decade of parameters
    fit = pd.DataFrame([{"layer": f"l{i}", "label": m, "method": m, "params": p, "params_dense": 300_000,
                         "fit_mean": 0.9 - p / 1e6} for i in range(4) for m in ("svd", "tt", "cp")
                        for p in (1_000, 3_000, 12_000, 50_000, 200_000, 300_000)])
    plot_fit_error(fit, "four panels", tmp_path / "fit")           # 4 narrow panels, 2.5 decades each
    for fig in kept_figures:
        _check_tick_labels(fig)


def test_rerender_is_byte_identical_and_fonts_are_truetype(tmp_path):
    from plots.paper import figure_accuracy

    s = accuracy_summary(_two_methods())
    a = figure_accuracy(s, "repro", tmp_path / "a" / "f")
    b = figure_accuracy(s, "repro", tmp_path / "b" / "f")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    pdf = a[1].read_bytes()
    assert b"/Subtype /Type3" not in pdf and b"/FontFile2" in pdf and b"CreationDate" not in pdf


def test_every_method_has_its_own_colour_and_marker():
    builtin = ["adtn", "alds", "alds-svd", "cp", "dense", "nnbcd-prune", "nnbcd-tt", "prune", "svd", "tt", "tucker"]
    labels = sorted(set(builtin) | {"adtn-backward", "adtn-forward", "adtn-all"})  # plugins of other tests excluded
    styles = [style.method_style(lb) for lb in labels]
    assert len(labels) >= 11
    assert len({s["color"] for s in styles}) == len(labels) and len({s["marker"] for s in styles}) == len(labels)
    assert style.method_style("my-plugin") == style.method_style("my-plugin", "svd")  # by name alone


def test_bench_report_is_data_only():
    import subprocess
    import sys

    code = "import sys, bench.report; print(sorted(m for m in sys.modules if m.split('.')[0] in ('plots', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_longest_finetune_keeps_each_networks_protocol_epochs():
    rows = [_rec("a", finetune={"epochs": 1}), _rec("b", finetune={"epochs": 3}),
            _rec("c", network="lenet5", finetune={"epochs": 1}), _rec("d", network="lenet5", finetune=None)]
    kept = longest_finetune(pd.DataFrame(rows))
    assert list(kept.key) == ["b", "c", "d"]  # FC-2 at 3 epochs, LeNet-5 at its only count, a fit record
    assert longest_finetune(pd.DataFrame(rows[:1])).key.tolist() == ["a"]
