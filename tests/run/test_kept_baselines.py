"""Baselines kept with a suite's records (``--keep-baselines``) are what a later sweep in a
fresh output starts from: no retraining, the same fingerprints, the records not stale."""
from __future__ import annotations

import json
import shutil

from bench.cli import main
from bench.records import read_records
from tests.plan.test_cost import write_cal


def _run(suite, out, *more) -> int:
    return main(["--suite", str(suite), "--out", str(out), "--no-progress", *more])


def test_a_fresh_output_resumes_on_the_kept_baselines(tmp_path, tiny_suite, capsys):
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(suite, first, "--keep-baselines") == 0
    kept = sorted((first / suite.stem / "baselines").iterdir())
    assert [p.suffix for p in kept] == [".json", ".pt"]  # one baseline: its summary and weights
    trained = json.loads(kept[0].read_text())

    (second / suite.stem).mkdir(parents=True)  # a clean clone: the records and the kept folder only
    shutil.copy(first / suite.stem / "runs.jsonl", second / suite.stem / "runs.jsonl")
    shutil.copytree(first / suite.stem / "baselines", second / suite.stem / "baselines")
    more = tiny_suite(methods=["dense", "svd"], ratios=[2, 8], seeds=[0]).read_text()
    suite.write_text(more)  # the suite grows a budget: one job runs, on the kept baseline
    capsys.readouterr()
    assert _run(suite, second) == 0
    err = capsys.readouterr().err
    assert "1 dense baselines taken from" in err
    cached = json.loads((second / "checkpoints" / kept[0].name).read_text())
    assert cached == trained  # copied, not retrained (a retrain writes its own time_train_s)
    recs = read_records(second / suite.stem / "runs.jsonl")
    assert len(recs) == 3 and {r["baseline_fingerprint"] for r in recs} == {trained["weights_fingerprint"]}


def test_keep_baselines_is_a_run_flag(tiny_suite, capsys):
    assert main(["--suite", str(tiny_suite()), "--report-only", "--keep-baselines"]) == 2
    assert "--keep-baselines with --report-only: only a run reads it" in capsys.readouterr().err


def test_a_suite_that_reuses_records_starts_from_their_kept_baselines(tmp_path, tiny_suite, capsys):
    """The records a suite reuses were made on the reused suite's baselines; a sweep in a fresh
    output takes those (not a retrain, which on another machine gives other weights)."""
    first_suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(first_suite, first, "--keep-baselines") == 0
    trained = json.loads(sorted((first / first_suite.stem / "baselines").glob("*.json"))[0].read_text())
    shutil.copytree(first / first_suite.stem, second / first_suite.stem)  # the clean clone: records + kept
    reuser = tiny_suite(methods=["dense", "svd"], ratios=[2, 8], seeds=[0], reuse=[first_suite.stem])
    capsys.readouterr()
    cal = str(write_cal(tmp_path / "cal.json"))
    assert _run(reuser, second, "--dry-run", "--calibration", cal) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "(baselines)" not in out  # kept with the reused records: nothing to train
    assert _run(reuser, tmp_path / "third", "--dry-run", "--calibration", cal) == 0
    assert "(baselines)" in capsys.readouterr().out  # elsewhere it would be trained
    assert _run(reuser, second) == 0
    err = capsys.readouterr().err
    assert f"1 dense baselines taken from {second / first_suite.stem / 'baselines'}" in err
    assert "took 2 records of equal jobs" in err  # dense and svd at 2x; svd at 8x runs
    recs = read_records(second / reuser.stem / "runs.jsonl")
    assert len(recs) == 3 and {r["baseline_fingerprint"] for r in recs} == {trained["weights_fingerprint"]}


def test_the_dry_run_judges_records_on_the_kept_baseline_the_sweep_would_take(tmp_path, tiny_suite, capsys):
    """A clean clone holds records and a kept baseline, no checkpoint cache: the sweep seeds the
    cache from the kept folder and then finds records made on another baseline stale; the dry
    run, which copies nothing, reads the kept summary and says the same."""
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    first, clone = tmp_path / "first", tmp_path / "clone"
    assert _run(suite, first, "--keep-baselines") == 0
    shutil.copytree(first / suite.stem, clone / suite.stem)
    cal = str(write_cal(tmp_path / "cal.json"))
    capsys.readouterr()
    assert _run(suite, clone, "--dry-run", "--calibration", cal) == 0
    assert capsys.readouterr().out.count("recorded:") == 2  # on the kept baseline: done
    summary = next((clone / suite.stem / "baselines").glob("*.json"))
    meta = json.loads(summary.read_text())
    summary.write_text(json.dumps({**meta, "weights_fingerprint": "0" * 16}))  # kept: another baseline
    assert _run(suite, clone, "--dry-run", "--calibration", cal) == 0
    out = capsys.readouterr().out
    assert out.count("recorded:") == 0  # both records were made on another baseline: both run again
