"""bench.verdicts: record queries, the safe relation parser, claims that fail when the records
stop supporting them, README blocks; and every claim of results/claims.yaml on the committed
records, rendered as results/README.md has it."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.records import append_record
from bench.report import ci_halfwidth, welch_p
from bench.verdicts import (Records, check_all, check_claim, evaluate, load_claims, parse_expression, render_blocks,
                            readme_blocks, run, run_query, stale_blocks, write_blocks)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"

# accuracies per (label, epochs) over seeds 0, 1, 2
ACC = {("tt", 1): [96.0, 96.5, 97.0], ("tt", 3): [97.0, 97.5, 98.0],
       ("svd", 1): [97.0, 97.2, 97.4], ("svd", 3): [95.0, 95.2, 95.4],   # svd and tt swap, separated at 3
       ("cp", 1): [90.0, 91.0, 92.0], ("cp", 3): [90.5, 91.5, 92.5]}


def _rec(label, epochs, seed, acc, budget="x8", **kw):
    return {"key": f"{label}-{budget}-{epochs}-{seed}", "status": "ok", "suite": "s", "network": "fc2",
            "dataset": "mnist", "method": label, "label": label, "budget": budget, "seed": seed, "options": {},
            "acc_after_finetune": acc, "acc_dense": 98.0, "params_compressed_layers": 1000,
            "finetune": {"epochs": epochs}, "extras": {"sweeps": 10 + seed, "curve": [0.1, 0.5 + seed, 0.3]}, **kw}


@pytest.fixture
def results(tmp_path):
    for (label, epochs), accs in ACC.items():
        for seed, acc in enumerate(accs):
            append_record(tmp_path / "s" / "runs.jsonl", _rec(label, epochs, seed, acc))
    append_record(tmp_path / "s" / "runs.jsonl", {**_rec("cp", 3, 3, None), "status": "failed",
                                                  "error": "FloatingPointError: loss is nan in epoch 1"})
    return tmp_path


def q(records, **kw):
    return run_query(records, {"suite": "s", **kw})


def test_query_mean_ci_and_counts(results):
    r = Records(results)
    tt = q(r, label="tt", epochs=3)
    assert tt.value == pytest.approx(97.5) and tt.n == 3
    assert tt.ci == pytest.approx(ci_halfwidth([97.0, 97.5, 98.0]))
    assert q(r, label="tt", epochs=3, stat="ci").value == pytest.approx(tt.ci)
    assert tt.render("pm") == "97.50 ± 1.24" and tt.render("") == "97.50" and tt.render("n") == "3"
    assert q(r, label=["tt", "svd"], epochs=1, stat="min").value == 96.0
    assert q(r, label="tt", epochs=1, seed=2, stat="value").value == 97.0
    assert q(r, label="tt", field="extras.sweeps", stat="max").value == 12          # a nested field
    assert q(r, label="tt", seed=1, epochs=1, field="extras.curve", stat="max").value == 1.5  # a list: each number
    assert q(r, label="tt", seed=1, epochs=1, field="extras.curve.-1", stat="value").value == 0.3
    assert q(r, label="tt", epochs=3, minus={"epochs": 1}).render("") == "+1.00"    # a gain
    # failed records are out unless asked for; n of nothing is 0, a mean of nothing an error
    assert q(r, label="cp", epochs=3, stat="n").value == 3
    assert q(r, status="failed", error_contains="loss is nan", field="seed", stat="n").value == 1
    assert q(r, label="prune", stat="n").value == 0
    with pytest.raises(ValueError, match="no records"):
        q(r, label="prune")
    with pytest.raises(ValueError, match="one record"):
        q(r, label="tt", stat="value")
    with pytest.raises(ValueError, match="unknown query key"):
        q(r, lable="tt")


def test_pm_follows_the_tables_rule_for_runs_at_chance(tmp_path):
    """A mean over seeds of which some ended at chance gets no CI and says so, as a table
    cell does (bench.report_cells.format_cell); all at chance is marked too."""
    for seed, acc in enumerate([92.0, 11.35, 93.0]):  # MNIST: a constant prediction scores 11.35
        append_record(tmp_path / "s" / "runs.jsonl", _rec("tt", 1, seed, acc))
    for seed in range(3):
        append_record(tmp_path / "s" / "runs.jsonl", _rec("cp", 1, seed, 10.5 + seed / 10))
    r = Records(tmp_path)
    assert q(r, label="tt").render("pm") == "65.45 ‡ bimodal: 1/3 at chance"
    assert q(r, label="tt", seed=[0, 2]).render("pm") == "92.50"  # two seeds: no CI, none at chance
    assert q(r, label="cp").render("pm") == "10.60 ± 0.25 ‡ at chance"
    assert q(r, label="cp", field="acc_dense").render("pm") == "98.00 ± 0.00"  # the dense accuracy beside it


def test_a_field_path_with_dotted_keys_and_boolean_fields(tmp_path):
    for seed, edge in enumerate([True, False, True]):
        append_record(tmp_path / "s" / "runs.jsonl", _rec("tt", 1, seed, 90.0, lr_tuning={"pick_at_edge": edge},
                                                          layer_info={"classifier.0": {"params": 4296 + seed}}))
    r = Records(tmp_path)
    assert q(r, field=["layer_info", "classifier.0", "params"], stat="max").value == 4298  # a key with a dot in it
    assert q(r, field="layer_info.classifier.0.params", stat="n").value == 0  # the dotted string splits it
    edge = q(r, field="lr_tuning.pick_at_edge")
    assert edge.value == pytest.approx(2 / 3) and edge.n == 3  # booleans count 1 or 0: a fraction
    with pytest.raises(ValueError, match="dotted path or a list"):
        q(r, field=["layer_info", None])


def test_order_changes_and_welch(results):
    r = Records(results)
    changes = q(r, stat="order_changes", between=[1, 3])
    assert changes.value == 1 and [(a, b) for a, b, _ in changes.pairs] == [("svd", "tt")]
    assert changes.pairs[0][2] == pytest.approx(welch_p(ACC[("svd", 3)], ACC[("tt", 3)]))
    assert q(r, stat="order_changes", between=[1, 3], separated=0.05).value == 1
    assert q(r, stat="order_changes", between=[1, 3], separated=1e-9).value == 0
    assert q(r, stat="kendall_tau", between=[1, 3]).value == pytest.approx(1 / 3)
    v = check_claim(r, {"id": "p", "where": {"suite": "s", "epochs": 3},
                        "values": {"tt": {"label": "tt"}, "svd": {"label": "svd"}, "p": {"welch": ["tt", "svd"]}},
                        "expect": "p < 0.05", "text": "p = {p}"})
    assert v.ok and v.values["p"].value == pytest.approx(welch_p(ACC[("tt", 3)], ACC[("svd", 3)]))


def test_relations_are_parsed_safely():
    from bench.verdicts import Value

    vals = {"tt": Value(97.5, ci=0.4, n=3), "adtn": Value(94.4), "a": Value(1.0), "b": Value(1.3)}
    assert evaluate("tt > adtn", vals) is True
    assert evaluate("abs(a - b) < 0.5", vals) and not evaluate("abs(a - b) < 0.2", vals)
    assert evaluate("tt > adtn > a and not a > b", vals) and evaluate("tt - adtn * 2 / 4 == 97.5 - 47.2", vals)
    assert evaluate("max(a, b) == b or adtn > tt", vals) and evaluate("ci(tt) < 1 and n(tt) == 3", vals)
    for bad in ("__import__('os')", "__import__('os').system('true')", "a.__class__", "open('x')", "'text'",
                "tt ** 2", "[a, b]", "(lambda: 1)()", "a if b else tt", "ci(tt + 1)", "abs(x=a)", "a; b", "True"):
        with pytest.raises(ValueError):
            parse_expression(bad)
    with pytest.raises(ValueError, match="no value named"):
        evaluate("missing > 1", vals)


def test_a_claim_the_records_contradict_fails(results, tmp_path, capsys):
    r = Records(results)
    claim = {"id": "svd-ahead", "where": {"suite": "s", "epochs": 3},
             "values": {"svd": {"label": "svd"}, "tt": {"label": "tt"}, "gap": "svd - tt"},
             "expect": ["svd > tt"], "text": "svd {svd:pm} is ahead of tt {tt:pm} by {gap}."}
    v = check_claim(r, claim)
    assert not v.ok and "svd > tt does not hold" in v.failures[0] and "svd = 95.20" in v.failures[0]
    assert v.text == "svd 95.20 ± 0.50 is ahead of tt 97.50 ± 1.24 by -2.30."
    # at 1 epoch the same statement holds
    assert check_claim(r, {**claim, "where": {"suite": "s", "epochs": 1}}).ok
    # a query that matches nothing, an unsafe relation and an unsafe placeholder fail the claim
    assert not check_claim(r, {**claim, "values": {"svd": {"label": "prune"}}}).ok
    assert "not allowed" in check_claim(r, {**claim, "expect": "__import__('os')"}).failures[0]
    assert not check_claim(r, {**claim, "expect": [], "text": "{svd.__class__}"}).ok
    # through run(): FAIL line, exit 1
    (results / "claims.yaml").write_text(
        "records:\n  - id: svd-ahead\n    where: {suite: s, epochs: 3}\n    values:\n      svd: {label: svd}\n"
        "      tt: {label: tt}\n    expect: svd > tt\n    text: svd {svd}\n")
    (results / "README.md").write_text("x\n<!-- claims:begin records -->\n<!-- claims:end records -->\n")
    assert run(results, write=True) == 1
    assert "FAIL records/svd-ahead: svd > tt does not hold" in capsys.readouterr().out


def test_readme_blocks_are_written_and_checked(results):
    claims = {"head": [{"id": "n", "values": {"n": {"suite": "s", "label": "tt", "stat": "n"}},
                        "text": "{n} tt records, {{braces}}."}],
              "body": [{"id": "tt", "values": {"tt": {"suite": "s", "label": "tt", "epochs": 3}}, "expect": "tt > 97",
                        "text": "- tt {tt:pm}\n"},
                       {"id": "cp", "values": {"cp": {"suite": "s", "label": "cp", "epochs": 3, "fmt": ".1f"}},
                        "text": "- cp {cp}\n"}]}
    verdicts = check_all(results, claims)
    assert all(v.ok for v in verdicts)
    blocks = render_blocks(verdicts)
    assert blocks == {"head": "6 tt records, {braces}.\n", "body": "- tt 97.50 ± 1.24\n- cp 91.5\n"}
    readme = ("# R\n\n<!-- claims:begin head -->\nold\n<!-- claims:end head -->\n\nprose\n\n"
              "<!-- claims:begin body -->\n<!-- claims:end body -->\n")
    assert len(stale_blocks(readme, blocks)) == 2
    new = write_blocks(readme, blocks)
    assert stale_blocks(new, blocks) == [] and readme_blocks(new) == blocks and "\nprose\n" in new
    assert any("not in the README" in s for s in stale_blocks(new.replace("head", "other"), blocks))
    # the CLI: --check passes on a current README, fails on a stale one
    (results / "claims.yaml").write_text(__import__("yaml").safe_dump(claims))
    (results / "README.md").write_text(new)
    from plots.__main__ import main

    assert main(["verdicts", "--results", str(results), "--check"]) == 0
    (results / "README.md").write_text(readme)
    assert main(["verdicts", "--results", str(results), "--check"]) == 1
    assert main(["verdicts", "--results", str(results), "--write"]) == 0
    assert (results / "README.md").read_text() == new


def _has_records() -> bool:
    return any(RESULTS.glob("*/runs.jsonl")) or any(RESULTS.glob("*/fit_runs.jsonl"))


@pytest.mark.skipif(not _has_records(), reason="results/ has no records")
def test_every_committed_claim_holds_and_the_readme_shows_it():
    verdicts = check_all(RESULTS, load_claims(RESULTS / "claims.yaml"))
    failed = {f"{v.block}/{v.id}": v.failures for v in verdicts if not v.ok}
    assert not failed, failed
    readme = (RESULTS / "README.md").read_text()
    assert stale_blocks(readme, render_blocks(verdicts)) == [], "run: python -m plots verdicts --write"
    assert not any(math.isnan(x.value) for v in verdicts for x in v.values.values())
