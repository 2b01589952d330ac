"""`python -m plots paper`: every figure and table from records, numbers carried exactly."""
import pandas as pd
import pytest

from bench.records import append_record
from plots.__main__ import main as plots_main
from bench.suite_schema import PAPER_ROLES
from plots.paper import build, pareto_mask, paper_suites, suite_roles
from tests.conftest import REPO

ROLES = {"mnist": ["accuracy", "cost", "headline", "equal-budget"], "fit-mnist": ["fit"],
         "adtn-depth": ["depth"], "adtn-order": ["order"], "ft-epochs": ["convergence"]}


def _write_suites(root, roles=ROLES):
    root.mkdir(parents=True, exist_ok=True)
    for name, r in roles.items():
        (root / f"{name}.yaml").write_text(f"base: smoke\ndescription: test\npaper: {r}\n".replace("'", ""))
    (root / "smoke.yaml").write_text("base: smoke\ndescription: no paper key\npaper: null\n")
    return root


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
    for epochs in (1, 2, 4):
        for seed in (0, 1):
            append_record(root / "ft-epochs" / "runs.jsonl", _rec(
                key=f"e{epochs}s{seed}", method="svd", label="svd", budget="x10", seed=seed, finetune={"epochs": epochs},
                acc_after_finetune=80.0 + epochs + seed, params_compressed_layers=100, achieved_ratio=10))
    # a left-over suite without `paper:` in its YAML: never read by default
    append_record(root / "smoke" / "runs.jsonl", _rec(key="s0", method="svd", label="svd", budget="x2", seed=0,
                  acc_after_finetune=12.34, params_compressed_layers=500, achieved_ratio=2.0))


def test_pareto_mask():
    assert pareto_mask(pd.Series([1, 2, 3, 4]), pd.Series([50, 40, 60, 60])) == [True, False, True, False]


def test_synthetic_records_give_every_figure_and_exact_numbers(tmp_path):
    _write_synthetic(tmp_path / "results")
    made = build(tmp_path / "results", tmp_path / "fig", suites_dir=_write_suites(tmp_path / "suites"))
    names = {p.name for p, _ in made}
    for stem in ("fig1_accuracy_mnist_fc2_mnist", "fig2_fit_fit-mnist_fc2_mnist", "fig3_depth_adtn-depth",
                 "fig4_order_adtn-order", "fig5_cost_mnist_fc2_mnist", "fig6_convergence_ft-epochs"):
        assert {stem + ".png", stem + ".pdf"} <= names
    for stem in ("table_headline", "table_reported_vs_measured", "table_convergence_ft-epochs"):
        assert {stem + ".md", stem + ".csv", stem + ".tex"} <= names
    assert {"table_equal_budget_mnist.md", "table_equal_budget_mnist.csv"} <= names
    assert not any("smoke" in n or "ft-epochs" in n and not n.startswith(("fig6", "table_convergence")) for n in names)
    assert "12.34" not in (tmp_path / "fig" / "table_reported_vs_measured.md").read_text()
    for p, _ in made:
        assert p.exists() and p.stat().st_size > 0
    head = pd.read_csv(tmp_path / "fig" / "table_headline.csv")
    svd = head[head.method == "svd"].set_index("δ (%)")
    assert svd.loc[0.0, "params"] == "—"                     # nothing reaches 98.00
    assert svd.loc[1.0, "accuracy"] == "2/2 ok: 97.50"  # mean of 97.75, 97.25; no CI below 3 seeds (SEED_RULE)
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

    roles = {"mnist": ["accuracy", "cost", "headline", "equal-budget"], "fit-mnist": ["fit"],
             "adtn-depth": ["depth"], "adtn-order": ["order"]}
    made = build(REPO / "results", tmp_path / "fig", suites_dir=_write_suites(tmp_path / "suites", roles))
    tmp_path = tmp_path / "fig"
    assert all(p.stat().st_size > 0 for p, _ in made)
    table = (tmp_path / "table_headline.md").read_text()
    summary = accuracy_summary(records_frame(REPO / "results" / "mnist" / "runs.jsonl"))
    dense = summary[summary.method == "dense"]
    for acc in dense.acc_mean:
        assert f"{acc:.2f}" in table


def test_roles_come_from_the_suite_yaml(tmp_path):
    suites = _write_suites(tmp_path)
    assert suite_roles("mnist", suites) == {"accuracy", "cost", "headline", "equal-budget"}
    assert suite_roles("smoke", suites) is None and suite_roles("nope", suites) is None
    assert set(paper_suites(None, suites)) == set(ROLES)           # smoke declares no `paper:`
    assert paper_suites(["smoke"], suites)["smoke"] >= {"accuracy"}  # named explicitly: default roles
    (tmp_path / "bad.yaml").write_text("base: smoke\npaper: [accuracy, colour]\n")
    with pytest.raises(ValueError, match="colour"):
        suite_roles("bad", tmp_path)
    assert "convergence" in PAPER_ROLES and "equal-budget" in PAPER_ROLES


def test_cli_reads_only_the_named_suites(tmp_path, capsys):
    _write_synthetic(tmp_path / "results")
    suites = _write_suites(tmp_path / "suites")
    assert plots_main(["paper", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "fig"),
                       "--suites", "adtn-order,smoke", "--suites-dir", str(suites)]) == 0
    names = {p.name for p in (tmp_path / "fig").iterdir()}
    assert "fig4_order_adtn-order.png" in names and "fig1_accuracy_smoke_fc2_mnist.png" in names
    assert not any("mnist_fc2" in n and "smoke" not in n for n in names) and "fig3_depth_adtn-depth.png" not in names


def test_convergence_figure_plots_ci_over_seeds(tmp_path, monkeypatch):
    from plots import paper, style

    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(style.plt, "close", figs.append)
    _write_synthetic(tmp_path / "results")
    from bench.report import records_frame

    paper.figure_convergence(records_frame(tmp_path / "results" / "ft-epochs" / "runs.jsonl"), tmp_path / "c")
    (ax,) = [a for a in figs[0].axes if a.get_visible()]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 4] and list(line.get_ydata()) == [81.5, 82.5, 84.5]
    assert ax.get_title() == "fc2/mnist x10"
    close(figs[0])


def test_convergence_table_ranks_methods_per_epoch_count_and_says_when_the_order_changed():
    from bench.report import convergence_table

    rows = []
    # svd leads after 1 epoch, tt after 4: tau between the 1- and 4-epoch rankings is -1
    for label, accs in (("svd", {1: 90.0, 4: 91.0}), ("tt", {1: 85.0, 4: 95.0}), ("cp", {1: 80.0, 4: 82.0})):
        for e, acc in accs.items():
            for seed in (0, 1):
                rows.append(_rec(key=f"{label}{e}{seed}", method=label, label=label, budget="x8", seed=seed,
                                 finetune={"epochs": e}, acc_after_finetune=acc + seed, params_compressed_layers=100))
    t = convergence_table(pd.DataFrame(rows)).set_index("method")
    assert t.loc["svd", "1 ep (rank)"].endswith("(1)") and t.loc["svd", "4 ep (rank)"].endswith("(2)")
    assert t.loc["tt", "4 ep (rank)"].startswith("95.50 ±") and t.loc["tt", "4 ep (rank)"].endswith("(1)")
    tau = t.loc["Kendall tau vs 4 epochs"]
    assert tau["4 ep (rank)"] == "1.00" and tau["1 ep (rank)"] == "0.33"


def test_reported_vs_measured_takes_each_rows_suite_and_budget():
    """The v2/v3 row reads cifar10-headline at its headline ratio only: ADTN's size and mean ± CI,
    every other method at that budget beside it; the v1 row (cifar10-conv, no records) stays missing."""
    from plots.paper import reported_vs_measured

    def rec(method, seed, acc, params, budget="x2191.57", suite="cifar10-headline"):
        return {"status": "ok", "suite": suite, "network": "vgg16", "dataset": "cifar10", "method": method,
                "label": method, "budget": budget, "seed": seed, "acc_after_finetune": acc, "acc_dense": 88.0,
                "params_compressed_layers": params}

    df = pd.DataFrame([rec("adtn", 0, 80.0, 8616), rec("adtn", 1, 82.0, 8616), rec("tt", 0, 85.0, 8472),
                       rec("adtn", 0, 99.0, 30000, budget="x32"),            # another budget: not read
                       rec("adtn", 0, 99.0, 2148, suite="cifar10-conv", budget="x1")])  # other budget label
    table = reported_vs_measured(df).set_index("suite")
    head = table.loc["cifar10-headline"]
    assert head["measured params"] == 8616
    assert head["measured acc"] == "81.00 (n=2)"  # mean of 80, 82; no CI below 3 seeds (the tables' seed rule)
    assert head["measured dense acc"] == "88.00"
    assert head["other methods at this budget"] == "tt 85.00 (8,472 p, n=1)"
    conv = table.loc["cifar10-conv"]
    assert conv["measured acc"] == "—" and conv["reported acc"] == "81.14 → 84.36"
    # two ADTN configurations at the budget (layouts, orders) are listed apart, never pooled into n=2
    two = pd.DataFrame([rec("adtn", 0, 80.0, 8616), {**rec("adtn", 0, 85.0, 8616), "label": "adtn-interleaved"}])
    head = reported_vs_measured(two).set_index("suite").loc["cifar10-headline"]
    assert head["measured acc"] == "adtn-interleaved 85.00 (n=1); adtn 80.00 (n=1)"


@pytest.mark.skipif(not (REPO / "results" / "figures" / "index.md").exists(), reason="no committed figures")
def test_committed_tables_are_what_the_records_give(capsys):
    """results/figures is regenerated whenever records land: ``paper --check`` says when not."""
    code = plots_main(["paper", "--results", str(REPO / "results"), "--out", str(REPO / "results" / "figures"),
                       "--check"])
    assert code == 0, capsys.readouterr().out


def test_paper_check_names_stale_tables_and_writes_nothing(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "fig"
    _write_synthetic(results)
    args = ["paper", "--results", str(results), "--out", str(out), "--suites-dir", str(_write_suites(tmp_path / "s"))]
    assert plots_main(args) == 0
    assert plots_main([*args, "--check"]) == 0
    append_record(results / "mnist" / "runs.jsonl", _rec(key="a2", method="svd", label="svd", budget="x2", seed=2,
                  acc_after_finetune=92.0, params_compressed_layers=500, achieved_ratio=2.0))  # a seed lands
    (out / "table_from_an_old_run.csv").write_text("x\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert plots_main([*args, "--check"]) == 1
    said = capsys.readouterr().out
    assert "4 table(s) differ" in said and "table_from_an_old_run.csv" in said
    assert all(f"table_headline.{ext}" in said for ext in ("md", "csv", "tex"))
    assert "index.md" not in said  # the same figures and tables exist: only their numbers changed
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_dense_accuracy_is_a_mean_over_seeds_not_records():
    """Seed 0 has three jobs' records, seed 1 one: the dense accuracy is (90 + 92) / 2, not the
    record-weighted 90.5 (cifar10-headline showed 90.40 for baselines of 90.38 and 90.56)."""
    import pandas as pd

    from plots.paper import dense_accuracy

    frame = pd.DataFrame({"seed": [0, 0, 0, 1], "acc_dense": [90.0, 90.0, 90.0, 92.0]})
    assert dense_accuracy(frame) == 91.0


def test_the_depth_figure_draws_one_line_per_entry_when_a_suite_has_several(tmp_path, monkeypatch):
    """adtn-depth-v3 runs ADTN with and without its pre-fit at each depth: one line each, not one
    line through the means of both."""
    import plots.paper as paper

    drawn = {}
    monkeypatch.setattr(paper, "save_figure", lambda fig, stem, tight=False: drawn.setdefault("fig", fig) and [])
    recs = pd.DataFrame([_rec(key=f"{label}{m}", method="adtn", label=label, budget=f"knob={m}", seed=0,
                              acc_after_finetune=acc + m, params_compressed_layers=100 * m, achieved_ratio=10 / m)
                         for label, acc in (("adtn-interleaved", 90.0), ("adtn-interleaved-scratch", 80.0))
                         for m in (1, 2)])
    paper.figure_depth(recs, tmp_path / "fig")
    accuracy = drawn["fig"].axes[0]
    lines = {c.get_label(): list(c.lines[0].get_ydata()) for c in accuracy.containers}
    assert lines == {"fc2/mnist adtn-interleaved": [91.0, 92.0], "fc2/mnist adtn-interleaved-scratch": [81.0, 82.0]}
    assert [list(ax.get_xticks()) for ax in drawn["fig"].axes[:2]] == [[1, 2], [1, 2]]  # the depths measured
    drawn.clear()
    paper.figure_depth(recs[recs.label == "adtn-interleaved"], tmp_path / "fig1")  # one entry: named by network
    assert [c.get_label() for c in drawn["fig"].axes[0].containers] == ["fc2/mnist"]
