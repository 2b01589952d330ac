"""``--time-budget`` end to end: the cifar10-headline suite on a few hundred official-format
CIFAR-10 images (the CPU rehearsal of a GPU window), and the tuning-seed rule on digits.

The budget is made deterministic: the calibration makes every estimate about 0 s, and the
budget's clock (``bench.cost.CLOCK``) advances 100 s per ok record written, so exactly the
first jobs in priority order fit, whatever the machine's speed."""
import dataclasses
import json

import numpy as np
import pytest

import bench.cost
import bench.data
from bench.cli import main
from bench.data import cifar
from bench.records import read_records
from tests.config.test_cifar_data import batch_bytes

ROWS = 40  # per official file: 200 training, 40 test images
FAST = {"train_img_s": 1e9, "eval_img_s": 1e9, "batch": 32}


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    """Official-format CIFAR-10 pickles of ROWS images each (the loader's counts shrunk)."""
    for name, spec in list(cifar.SPECS.items()):
        monkeypatch.setitem(cifar.SPECS, name, dataclasses.replace(spec, rows={f: ROWS for f in spec.rows}))
    monkeypatch.setattr(bench.data, "_CACHE", {})
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in cifar.SPECS["cifar10"].files:
        (folder / f).write_bytes(batch_bytes(rng, rows=ROWS)[0])
    return tmp_path / "data"


def fast_calibration(path, networks):
    path.write_text(json.dumps({"version": 1, "device": "cpu", "device_name": "test", "threads": 1,
                                "created": "test", "networks": {n: FAST for n in networks}, "factorize": {},
                                "job_overhead_s": {}}))
    return path


def clock_by_records(monkeypatch, records, per_ok_s=100.0):
    """The budget's clock: 100 s per ok record in ``records`` (a perfect, fixed cost model)."""
    monkeypatch.setattr(bench.cost, "CLOCK", lambda: per_ok_s * sum(r["status"] == "ok" for r in read_records(records)))


# the headline suite cut to seconds: one seed, two budgets, small recipes (one fine-tuning epoch count),
# ADTN pre-fit of 1 step; svd cannot get within 1.1x of either budget (skipped), ADTN's depth 1 is its only knob
HEADLINE = ["--suite", "cifar10-headline", "--no-download", "--no-progress", "--set", "protocol.seeds=[0]",
            "--set", "ratios=[2191.57,1024]", "--set", "budget_tolerance=1.1",
            "--set", "train.epochs=1", "--set", "train.warmup_epochs=0.5", "--set", "train.batch_size=32",
            "--set", "finetune.epochs=0.2", "--set", "protocol.finetune_epochs=null", "--set", "protocol.tune_epochs=null",
            "--set", "finetune.batch_size=32", "--set", "data.train_subset=64", "--set", "protocol.lr_grid=[0.003,0.01]",
            "--set", "methods=[dense, svd, tt, {method: adtn, options: {prefit_steps: 1, prefit_polish: 0, "
                     "max_depth: 1}}]"]


def _summary(records):
    return {r["key"]: (r["method"], r["budget"], r["status"]) for r in read_records(records)}


# about 1-2 min on one CPU thread (VGG-16's 2^24-weight layer, ADTN at Q = 24): the issue's whole-path check, so CI runs it
def test_headline_suite_stopped_by_the_budget_resumes_to_the_unstopped_records(tmp_path, cifar_dir, monkeypatch,
                                                                               capsys):
    cal = fast_calibration(tmp_path / "cal.json", ["vgg16"])
    common = HEADLINE + ["--data-dir", str(cifar_dir), "--calibration", str(cal)]
    stopped, unstopped = tmp_path / "stopped", tmp_path / "unstopped"
    records = stopped / "cifar10-headline" / "runs.jsonl"
    clock_by_records(monkeypatch, records)
    # 250 s: the 3 first jobs in priority order start (at 0, 100, 200 s); the 4th would start at
    # 300 s; ADTN at 1024x has the depth it has at 2191.57x (max_depth 1): a copy, in no time
    assert main(common + ["--out", str(stopped), "--time-budget", str(250 / 60)]) == 0
    out = capsys.readouterr().out
    assert "cifar10-headline: 7 jobs, 0 already done, 4 ok, 0 failed, 2 skipped, 1 left for later" in out
    first = read_records(records)
    assert [(r["method"], r["budget"], r["status"]) for r in first] == [
        ("svd", "x2191.57", "skipped"), ("svd", "x1024", "skipped"),     # ruled out before anything ran
        ("dense", "x1", "ok"), ("tt", "x2191.57", "ok"), ("adtn", "x2191.57", "ok"),  # priority order
        ("adtn", "x1024", "ok")]
    assert "budget unreachable" in first[0]["error"] and first[4]["knobs"] == {"classifier.0": 1, "classifier.3": 1}
    assert first[4]["params_compressed_layers"] == 8616  # the paper's 424 gates + 8,192 dense biases
    assert first[5]["same_as"] == first[4]["key"]

    assert main(common + ["--out", str(stopped)]) == 0  # resume without a budget: the rest
    assert "7 jobs, 6 already done, 1 ok, 0 failed, 0 skipped" in capsys.readouterr().out
    assert main(common + ["--out", str(unstopped)]) == 0
    assert "7 jobs, 0 already done, 5 ok, 0 failed, 2 skipped" in capsys.readouterr().out
    resumed, reference = _summary(records), _summary(unstopped / "cifar10-headline" / "runs.jsonl")
    assert resumed == reference and len(resumed) == 7
    ok = {r["key"]: r for r in read_records(records) if r["status"] == "ok"}
    ref = {r["key"]: r for r in read_records(unstopped / "cifar10-headline" / "runs.jsonl") if r["status"] == "ok"}
    for key, r in ok.items():  # the same seeds on the same data: the same numbers
        assert r["baseline_fingerprint"] == ref[key]["baseline_fingerprint"]
        assert r["acc_after_finetune"] == ref[key]["acc_after_finetune"]
    assert (stopped / "cifar10-headline" / "table.md").is_file()


def test_jobs_reusing_an_lr_pick_wait_for_their_tuning_seed(tmp_path, tiny_suite, monkeypatch, capsys):
    """Seed 1 reuses seed 0's lr pick: when the budget leaves seed 0's job for later, seed 1's
    waits too (it must not tune itself), and the resumed run does both in order."""
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2, 8], seeds=[0, 1], lr_grid=[0.01, 0.05],
                       priority=["baselines", "budgets", "seeds"])
    cal = fast_calibration(tmp_path / "cal.json", ["digitnet"])
    records = tmp_path / suite.stem / "runs.jsonl"
    clock_by_records(monkeypatch, records)
    args = ["--suite", str(suite), "--out", str(tmp_path), "--calibration", str(cal), "--no-progress"]
    assert main(args + ["--time-budget", str(150 / 60)]) == 0  # dense s0 and svd x2 s0 start
    assert "6 jobs, 0 already done, 2 ok, 0 failed, 0 skipped, 4 left for later" in capsys.readouterr().out
    assert [(r["method"], r["budget"], r["seed"]) for r in read_records(records)] == [
        ("dense", "x1", 0), ("svd", "x2", 0)]
    assert main(args + ["--time-budget", str(10000 / 60)]) == 0  # a new run, a new budget: the rest
    recs = {(r["method"], r["budget"], r["seed"]): r for r in read_records(records)}
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs.values())
    assert recs[("svd", "x8", 0)]["lr_tuning"]["tuned_here"]
    assert not recs[("svd", "x8", 1)]["lr_tuning"]["tuned_here"]
    assert recs[("svd", "x8", 1)]["lr_tuning"]["pick"] == recs[("svd", "x8", 0)]["lr_tuning"]["pick"]


@pytest.mark.slow
def test_ray_backend_honours_the_time_budget(tmp_path, tiny_suite, monkeypatch, capsys):
    """Ray submits one job per slot, each asked of the budget (the driver's clock) first."""
    ray = pytest.importorskip("ray")
    from tests.conftest import REPO

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        suite = tiny_suite(ratios=[2, 8])
        cal = fast_calibration(tmp_path / "cal.json", ["digitnet"])
        records = tmp_path / suite.stem / "runs.jsonl"
        clock_by_records(monkeypatch, records)
        args = ["--suite", str(suite), "--out", str(tmp_path), "--calibration", str(cal), "--no-progress",
                "--backend", "ray"]
        assert main(args + ["--time-budget", str(150 / 60)]) == 0
        assert "3 jobs, 0 already done, 2 ok, 0 failed, 0 skipped, 1 left for later" in capsys.readouterr().out
        assert main(args) == 0
        assert sorted(r["budget"] for r in read_records(records)) == ["x1", "x2", "x8"]
    finally:
        ray.shutdown()


def test_a_copy_is_not_left_for_later(tmp_path, tiny_suite, monkeypatch, capsys):
    """A budget beyond svd's reach copies the smaller one's measurement (same_as) in no time:
    the time budget does not hold it back, even when the clock has run out."""
    suite = tiny_suite(methods=["dense", "svd"], ratios=[100, 1000])
    cal = fast_calibration(tmp_path / "cal.json", ["digitnet"])
    records = tmp_path / suite.stem / "runs.jsonl"
    clock_by_records(monkeypatch, records)
    args = ["--suite", str(suite), "--out", str(tmp_path), "--calibration", str(cal), "--no-progress"]
    assert main(args + ["--time-budget", str(150 / 60)]) == 0  # dense (0 s) and svd x100 (100 s) start
    assert "3 jobs, 0 already done, 3 ok, 0 failed, 0 skipped" in capsys.readouterr().out
    recs = {r["budget"]: r for r in read_records(records)}
    assert recs["x1000"]["same_as"] == recs["x100"]["key"]


def test_a_search_stops_between_trials_at_the_budgets_end_and_resumes_to_the_same_pick(tmp_path, tiny_suite,
                                                                                      monkeypatch, capsys):
    """A tuning job starts with room for one trial (its search may take hours on a CPU), stops
    before a trial that does not fit, unrecorded, its finished trials kept; the next run takes
    them and ends where one run without a budget ends."""
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2, 8], lr_grid=[0.01, 0.05])
    cal = fast_calibration(tmp_path / "cal.json", ["digitnet"])
    stopped, unstopped = tmp_path / "stopped", tmp_path / "unstopped"
    records = stopped / suite.stem / "runs.jsonl"

    def trials_kept() -> int:
        return sum(len(json.loads(f.read_text())["trials"]) for f in stopped.rglob("tuning/*/trials.json"))

    # the budget's clock: 100 s per ok record and per trial kept
    monkeypatch.setattr(bench.cost, "CLOCK", lambda: 100.0 * (sum(r["status"] == "ok" for r in read_records(records))
                                                              + trials_kept()))
    args = ["--suite", str(suite), "--calibration", str(cal), "--no-progress"]
    # dense ends at 100 s; svd x2's first trial starts (one fits) and ends at 200 s: no room for its second
    assert main(args + ["--out", str(stopped), "--time-budget", str(150 / 60)]) == 0
    assert "3 jobs, 0 already done, 1 ok, 0 failed, 0 skipped, 2 left for later" in capsys.readouterr().out
    assert [r["method"] for r in read_records(records)] == ["dense"] and trials_kept() == 1
    assert main(args + ["--out", str(stopped)]) == 0
    assert "3 jobs, 1 already done, 2 ok, 0 failed, 0 skipped" in capsys.readouterr().out
    assert trials_kept() == 0  # recorded: the journals are gone
    assert main(args + ["--out", str(unstopped)]) == 0
    ref = {r["budget"]: r for r in read_records(unstopped / suite.stem / "runs.jsonl")}
    got = {r["budget"]: r for r in read_records(records)}
    assert list(got["x2"]["lr_tuning"]["resumed"]) == ["0.01"]  # the first trial, from the journal
    for budget in ("x2", "x8"):
        assert got[budget]["lr_tuning"]["val_acc"] == ref[budget]["lr_tuning"]["val_acc"]
        assert got[budget]["lr_tuning"]["pick"] == ref[budget]["lr_tuning"]["pick"]
        assert got[budget]["acc_after_finetune"] == ref[budget]["acc_after_finetune"]
