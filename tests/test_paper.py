"""`python -m plots paper`: every figure and table from records, numbers carried exactly."""
import pandas as pd
import pytest

from bench.records import append_record
from plots.paper import build, pareto_mask
from tests.conftest import REPO


def _rec(**kw):
    base = {"status": "ok", "network": "fc2", "dataset": "mnist", "suite": "s", "options": {},
            "params_dense_layers": 1000, "acc_dense": 98.0, "acc_before_finetune": 50.0, "fit_rel_error": 0.5,
            "flops": 1e5, "target_ratio": 2.0, "layer_info": {"fc1": {"params": 500, "params_dense": 1000,
                                                                        "fit_rel_error": 0.5, "knob": 3}}}
    return {**base, **kw}


def _write_synthetic(root):
    recs = [
        _rec(key="d0", method="dense", label="dense", budget="x1", seed=0, acc_after_finetune=98.0,
             params_compressed_layers=1000, achieved_ratio=1.0, fit_rel_error=0.0),
        _rec(key="d1", method="dense", label="dense", budget="x1", seed=1, acc_after_finetune=98.0,
             params_compressed_layers=1000, achieved_ratio=1.0, fit_rel_error=0.0, acc_dense=98.0),
        _rec(key="a0", method="svd", label="svd", budget="x2", seed=0, acc_after_finetune=97.75,
             params_compressed_layers=500, achieved_ratio=2.0),
        _rec(key="a1", method="svd", label="svd", budget="x2", seed=1, acc_after_finetune=97.25,
             params_compressed_layers=500, achieved_ratio=2.0),
        _rec(key="b0", method="svd", label="svd", budget="x10", seed=0, acc_after_finetune=90.0,
             params_compressed_layers=100, achieved_ratio=10.0),
        _rec(key="c0", method="adtn", label="adtn", budget="x10", seed=0, acc_after_finetune=96.5,
             params_compressed_layers=424, achieved_ratio=2.4),
    ]
    for r in recs:
        append_record(root / "mnist" / "runs.jsonl", r)
        append_record(root / "fit-mnist" / "fit_runs.jsonl", {**r, "key": "f" + r["key"]})
    for m in (1, 2):
        append_record(root / "adtn-depth" / "runs.jsonl", _rec(key=f"m{m}", method="adtn", label="adtn",
                      budget=f"knob={m}", seed=0, acc_after_finetune=90.0 + m, params_compressed_layers=100 * m,
                      achieved_ratio=10 / m))
    for order, acc in (("backward", 95.0), ("forward", 94.0)):
        append_record(root / "adtn-order" / "runs.jsonl", _rec(key=order, method="adtn", label=f"adtn-{order}",
                      budget="x10", seed=0, acc_after_finetune=acc, params_compressed_layers=100, achieved_ratio=10))


def test_pareto_mask():
    assert pareto_mask(pd.Series([1, 2, 3, 4]), pd.Series([50, 40, 60, 60])) == [True, False, True, False]


def test_synthetic_records_give_every_figure_and_exact_numbers(tmp_path):
    _write_synthetic(tmp_path / "results")
    made = build(tmp_path / "results", tmp_path / "fig")
    names = {p.name for p, _ in made}
    for stem in ("fig1_accuracy_mnist_fc2_mnist", "fig2_fit_fit-mnist_fc2_mnist", "fig3_adtn_depth",
                 "fig4_adtn_order", "fig5_cost_mnist_fc2_mnist"):
        assert {stem + ".png", stem + ".pdf"} <= names
    for stem in ("table_headline", "table_reported_vs_measured"):
        assert {stem + ".md", stem + ".csv", stem + ".tex"} <= names
    for p, _ in made:
        assert p.exists() and p.stat().st_size > 0
    head = pd.read_csv(tmp_path / "fig" / "table_headline.csv")
    svd = head[head.method == "svd"].set_index("δ (%)")
    assert svd.loc[0.0, "params"] == "—"                     # nothing reaches 98.00
    assert svd.loc[1.0, "accuracy"] == "97.50 ± 0.35"          # mean/std of 97.75, 97.25
    assert svd.loc[1.0, "params"] == "500" and svd.loc[2.0, "params"] == "500"
    adtn = head[head.method == "adtn"].set_index("δ (%)")
    assert adtn.loc[2.0, "params"] == "424" and adtn.loc[1.0, "params"] == "—"
    rvm = (tmp_path / "fig" / "table_reported_vs_measured.md").read_text()
    assert "424" in rvm and "90.17 → 91.74" in rvm and "—" in rvm  # no vgg16 measured: shown missing
    assert r"\toprule" in (tmp_path / "fig" / "table_headline.tex").read_text()
    index = (tmp_path / "fig" / "index.md").read_text()
    assert all(f"[{p.name}]" in index for p, _ in made if p.name != "index.md")


@pytest.mark.skipif(not (REPO / "results" / "mnist" / "runs.jsonl").exists(), reason="no committed records")
def test_committed_records_regenerate(tmp_path):
    from bench.report import accuracy_summary, records_frame

    made = build(REPO / "results", tmp_path)
    assert all(p.stat().st_size > 0 for p, _ in made)
    table = (tmp_path / "table_headline.md").read_text()
    summary = accuracy_summary(records_frame(REPO / "results" / "mnist" / "runs.jsonl"))
    dense = summary[summary.method == "dense"]
    for acc in dense.acc_mean:
        assert f"{acc:.2f}" in table
