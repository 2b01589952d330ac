"""bench.report statistics (CI, folding, equal-budget interpolation, baseline fingerprints, the
rule for failed, collapsed and bimodal seeds, achieved size and storage) and the
reproducibility/readability of the figures in plots/."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bench.records import append_record
from bench.report import (accuracy_summary, baseline_split, ci_halfwidth, equal_budget, format_acc, format_cell,
                          longest_finetune, records_frame, welch_p)
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


# ---- one rule for failures and spread; equal budgets in fact (issue 21, items 6 and 7) ------

def _failed(key, method="svd", budget="x2", seed=0, **kw):
    """A record as ``failed_record`` writes it: the job's fields, no measurement."""
    return {"key": key, "status": "failed", "network": "fc2", "dataset": "mnist", "suite": "s", "options": {},
            "method": method, "label": method, "budget": budget, "seed": seed, "error": "boom", **kw}


def _seeds(label, budget, params, accs, dataset="mnist", **kw):
    """One record per seed of a (label, budget) cell, seed i scoring accs[i]."""
    return [_rec(f"{label}-{budget}-{i}", label, budget, i, a, params, dataset=dataset, **kw)
            for i, a in enumerate(accs)]


def test_failed_seeds_are_counted_and_withhold_the_ci():
    recs = (_seeds("svd", "x2", 500, [93.0, 93.2]) + [_failed("svd-x2-2", seed=2)]
            + _seeds("svd", "x8", 125, [80.0, 81.0, float("nan")])            # ok but no accuracy: failed
            + _seeds("tt", "x2", 500, [97.0, 98.0, 99.0])
            + [{**_failed("tt-x2-3", "tt", seed=3), "status": "skipped"}]      # never ran: not counted
            + _seeds("cp", "x2", 500, [97.0]))
    s = accuracy_summary(pd.DataFrame(recs)).set_index(["label", "budget"])
    assert s.loc[("svd", "x2"), ["seeds_ok", "seeds_run"]].tolist() == [2, 3]
    assert s.loc[("svd", "x2"), "accuracy"] == "2/3 ok: 93.10"                 # mean of the ok ones, no CI
    assert s.loc[("svd", "x8"), "accuracy"] == "2/3 ok: 80.50" and s.loc[("svd", "x8"), "seeds_run"] == 3
    assert s.loc[("tt", "x2"), "accuracy"] == "98.00 ± 2.48" and s.loc[("tt", "x2"), "seeds_run"] == 3
    assert s.loc[("cp", "x2"), "accuracy"] == "1/1 ok: 97.00"                  # under 3 seeds: no CI either
    assert not s.loc[("svd", "x2"), "ci_shown"] and s.loc[("tt", "x2"), "ci_shown"]
    # every seed failed: nothing measured, no row (the records stay among the jobs not ok)
    assert ("svd", "x64") not in s.index
    assert format_cell(float("nan"), float("nan"), 0, 3) == "0/3 ok"


def test_a_cell_with_collapsed_and_recovered_seeds_is_bimodal():
    from bench.report import chance_accuracy

    # LeNet-5/MNIST tt x32 as recorded: one seed predicts the digit 1 (11.35 % of the test set)
    recs = (_seeds("tt", "x32", 1926, [11.35, 93.30, 94.74], network="lenet5")
            + _seeds("cp", "x32", 1958, [10.0, 10.2, 9.9], network="lenet5")
            + _seeds("svd", "x32", 2150, [11.6, 60.0, 62.0], network="lenet5")
            + _seeds("tucker", "x32", 1900, [1.2, 40.0, 41.0], network="lenet5", dataset="cifar100"))
    s = accuracy_summary(pd.DataFrame(recs)).set_index("label")
    assert s.loc["tt", "accuracy"] == "66.46 ‡ bimodal: 1/3 at chance"        # not 66.46 ± 105.7
    assert s.loc["tt", "bimodal"] and s.loc["tt", "seeds_collapsed"] == 1 and not s.loc["tt", "ci_shown"]
    assert s.loc["tt", "acc_ci"] == pytest.approx(ci_halfwidth([11.35, 93.30, 94.74]))  # the statistic stays
    assert s.loc["cp", "accuracy"] == "10.03 ± 0.38 ‡ at chance" and not s.loc["cp", "bimodal"]
    assert s.loc["svd", "accuracy"] == "44.53 ± 70.89" and s.loc["svd", "seeds_collapsed"] == 0  # 1.6 from chance
    assert s.loc["tucker", "accuracy"] == "27.40 ‡ bimodal: 1/3 at chance"    # CIFAR-100: chance is 1 %
    assert chance_accuracy("cifar100") == 1.0 and chance_accuracy("digits") == 10.0
    assert math.isnan(chance_accuracy("no-such-dataset"))
    assert (format_cell(50.0, 1.0, 2, 3, collapsed=1) == "2/3 ok: 50.00 ‡ bimodal: 1/2 at chance")


def test_equal_budget_withholds_interpolations_next_to_collapsed_or_failed_points():
    from plots.equal_budget import NOTE, WITHHELD

    recs = (_seeds("a", "x10", 100, [10.0, 10.5, 9.8]) + _seeds("a", "x1", 1000, [89.0, 90.0, 91.0])
            + _seeds("a", "x0.1", 10000, [94.0, 95.0, 96.0])
            + _seeds("b", "x10", 100, [10.3, 60.0, 62.0]) + _seeds("b", "x1", 1000, [80.0, 81.0, 82.0])
            + _seeds("c", "x10", 100, [50.0, 51.0, 52.0]) + _seeds("c", "x1", 1000, [70.0, 71.0])
            + [_failed("c-x1-2", "c", "x1", 2)] + [_rec("c-x0.1-2", "c", "x0.1", 2, 95.0, 10000)])
    counts = [100, 316.22776601683796, 3162.2776601683795]
    eb = equal_budget(pd.DataFrame(recs), counts=counts).set_index(["label", "params"])
    mid = counts[1]
    assert eb.loc[("a", mid), "flag"] == "x10: at chance" and np.isnan(eb.loc[("a", mid), "acc_mean"])
    assert eb.loc[("b", mid), "flag"] == "x10: bimodal (1/3 at chance)"
    assert eb.loc[("c", mid), "flag"] == "x1: 1/3 failed"      # seed 2's line would bridge its failure
    assert eb.loc[("a", mid), "seeds"] == 3 and not eb.loc[("a", mid), "best"]
    # between two fit points: interpolated as before; at a measured point: its own measurement
    assert eb.loc[("a", counts[2]), "flag"] == "" and eb.loc[("a", counts[2]), "acc_mean"] == pytest.approx(92.5)
    assert eb.loc[("a", 100), "flag"] == "" and eb.loc[("a", 100), "seeds_collapsed"] == 3
    view = equal_budget_view(eb.reset_index()).set_index("params")
    assert view.loc["316", ["a", "b", "c"]].tolist() == [WITHHELD] * 3 and view.loc["316", "seeds"] == "3"
    assert view.loc["100", "a"] == "10.10 ± 0.90 ‡ at chance"
    assert view.loc["100", "b"] == "44.10 ‡ bimodal: 1/3 at chance"
    assert view.loc["100", "c"] == "**51.00 ± 2.48**"        # a bimodal point is not ranked against it
    assert view.loc["3,162", "a"] == "**92.50 ± 2.48**" and view.loc["3,162", "seeds"] == "3"
    assert "—*" in NOTE and "collapsed" in NOTE and "failed" in NOTE


def test_seeds_column_names_the_methods_with_another_count():
    recs = (_seeds("a", "x10", 100, [60.0, 61.0, 62.0]) + _seeds("a", "x1", 1000, [90.0, 91.0, 92.0])
            + _seeds("b", "x10", 100, [50.0, 51.0]) + _seeds("b", "x1", 1000, [80.0, 81.0]))
    view = equal_budget_view(equal_budget(pd.DataFrame(recs), counts=[316.22776601683796]))
    assert view.loc[0, "seeds"] == "3 (b 2)" and view.loc[0, "b"] == "2/2 ok: 65.50"


def test_achieved_size_is_shown_and_marked_when_off_target():
    from bench.report import accuracy_table

    recs = (_seeds("a", "x2", 556, [90.0, 91.0, 92.0])       # 1000/556 = 1.799: 10.07 % under 2
            + _seeds("b", "x2", 555, [90.0, 91.0, 92.0])     # 1.802: 9.9 % under
            + _seeds("c", "x4", 250, [90.0, 91.0, 92.0], target_ratio=4.0)
            + _seeds("d", "knob=3", 400, [90.0, 91.0, 92.0], target_ratio=None))
    s = accuracy_summary(pd.DataFrame(recs))
    t = accuracy_table(s).set_index("method")
    assert t.loc["a", "ratio"] == "1.8x †size" and t.loc["b", "ratio"] == "1.8x" and t.loc["c", "ratio"] == "4.0x"
    assert t.loc["d", "ratio"] == "2.5x"                                   # no target ratio: nothing to miss
    assert t.loc["a", "params"] == 556 and t.loc["a", "seeds (ok/run)"] == "3/3"
    assert s.set_index("label").loc["a", "size_off"] and not s.set_index("label").loc["b", "size_off"]


def test_pruning_storage_counts_values_plus_the_cheaper_index():
    from bench.report import accuracy_table, fit_summary, layer_storage, record_storage

    # 100 non-zeros of 1000 weights: bitmask 1000 bits = 31.25 values, CSR 100 -> 100 + 31.25
    assert layer_storage({"params": 100, "params_dense": 1000, "total": 1000}) == 131.25
    # biases (10) are values, never indexed
    assert layer_storage({"params": 110, "params_dense": 1010, "total": 1000}) == 141.25
    # 10 non-zeros: CSR (10 x 32 bits = 10 values) beats the 1000-bit mask
    assert layer_storage({"params": 10, "params_dense": 1000, "total": 1000}) == 20.0
    info = {"fc1": {"params": 100, "params_dense": 1000, "total": 1000, "knob": 100, "fit_rel_error": 0.4}}
    prune = _rec("p", "prune", "x10", 0, 90.0, 100, layer_info=info, params_counted_as="non-zero weights")
    assert record_storage(prune) == 131.25
    assert record_storage({**prune, "layer_info": {}}) == 131.25            # no per-layer info: one layer
    assert record_storage({**prune, "method": "nnbcd-prune", "params_counted_as": None}) == 131.25
    svd = _rec("s", "svd", "x10", 0, 90.0, 100, layer_info={"fc1": {**info["fc1"], "knob": 1}})
    assert record_storage(svd) == 100.0
    s = accuracy_summary(pd.DataFrame([prune, svd])).set_index("label")
    assert s.loc["prune", "storage"] == 131.25 and s.loc["svd", "storage"] == 100.0
    t = accuracy_table(s.reset_index()).set_index("method")
    assert t.loc["prune", "storage (values + index)"] == 131 and t.loc["prune", "params"] == 100
    f = fit_summary(pd.DataFrame([prune, svd, _failed("s1", "svd", "x10", 1)])).set_index("label")
    assert f.loc["prune", "storage"] == 131.25 and f.loc["svd", "storage"] == 100.0
    assert f.loc["svd", ["seeds", "seeds_run"]].tolist() == [1, 2]


def test_equal_storage_places_pruning_at_its_values_plus_index():
    """The equal-storage view (issue: pruning's index cost) moves a pruned point from its non-zero
    count to its storage; a factorisation's stays where it is (storage = parameters)."""
    def info(params):
        return {"fc1": {"params": params, "params_dense": 1000, "total": 1000, "knob": params}}

    recs = []
    for seed, d in enumerate((-1.0, 0.0, 1.0)):
        recs += [_rec(f"p100-{seed}", "prune", "x10", seed, 80.0 + d, 100, layer_info=info(100),
                      params_counted_as="non-zero weights"),
                 _rec(f"p200-{seed}", "prune", "x5", seed, 90.0 + d, 200, layer_info=info(200),
                      params_counted_as="non-zero weights"),
                 _rec(f"s100-{seed}", "svd", "x10", seed, 70.0 + d, 100), _rec(f"s300-{seed}", "svd", "x3", seed, 85.0 + d, 300)]
    frame = pd.DataFrame(recs)
    by_params = equal_budget(frame, counts=[100, 200]).set_index(["label", "params"])
    assert by_params.loc[("prune", 100), "acc_mean"] == pytest.approx(80.0)
    # storage: 100 kept of 1000 -> 100 + 1000 / 32 (mask) = 131.25; 200 kept -> 231.25
    by_storage = equal_budget(frame, counts=[131.25, 231.25], size="storage").set_index(["label", "params"])
    assert by_storage.loc[("prune", 131.25), "acc_mean"] == pytest.approx(80.0)
    assert by_storage.loc[("prune", 231.25), "acc_mean"] == pytest.approx(90.0)
    frac = np.log(131.25 / 100) / np.log(3)   # svd is unchanged: interpolated at its parameters
    assert by_storage.loc[("svd", 131.25), "acc_mean"] == pytest.approx(70.0 + frac * 15.0)
    assert equal_budget_view(equal_budget(frame, counts=[231.25], size="storage"), "storage").columns[0] == "storage"
    with pytest.raises(ValueError, match="size 'flops'"):
        equal_budget(frame, size="flops")


def test_network_ratio_counts_the_layers_left_dense():
    from bench.report import accuracy_table, network_ratio

    # 1,000 compressed to 100 in a network of 1,500: 1,500 / 600
    r = _rec("t", "svd", "x10", 0, 90.0, 100, params_total=600)
    assert network_ratio(r) == pytest.approx(2.5)
    assert math.isnan(network_ratio({k: v for k, v in r.items() if k != "params_total"}))
    s = accuracy_summary(pd.DataFrame([r, {**r, "key": "t1", "seed": 1}]))
    assert accuracy_table(s).loc[0, "network ratio"] == "2.50x"
