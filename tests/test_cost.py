"""The cost model (bench/cost.py), its calibration (bench/perf/calibrate.py), suite priorities
and the pre-run skips (budget_tolerance, factorize_time_cap_s): units, on the digits suite."""
import json
import math

import pytest

import bench.cost
from bench.cli import main
from bench.cost import Budget, CostModel, fit_power_law, split_sizes
from bench.suite import tuner_keys
from bench.records import read_records
from bench.runner import planned_skip
from bench.suite import SuiteError, expand, load_suite


def calibration(train=1000.0, evals=10000.0, factorize=None, networks=("digitnet",), **extra):
    """A calibration dict with round numbers, so estimates are exact."""
    return {"version": 1, "device": "cpu", "device_name": "test", "threads": 1, "created": "t0",
            "networks": {n: {"train_img_s": train, "eval_img_s": evals, "batch": 64} for n in networks},
            "factorize": factorize or {}, "job_overhead_s": {}, **extra}


def write_cal(path, **kw):
    path.write_text(json.dumps(calibration(**kw)))
    return path


def test_power_law_fit_recovers_exponent():
    a, b = fit_power_law([(n, 3e-6 * n ** 1.5) for n in (1e3, 1e4, 1e5)])
    assert b == pytest.approx(1.5) and a == pytest.approx(3e-6)
    assert fit_power_law([(100, 1.0), (1000, 0.5)])[1] == 0  # a time falling with size is noise


def test_job_cost_formula_counts_the_lr_grid_on_the_tuning_seed_only(tiny_suite):
    suite = load_suite(str(tiny_suite(seeds=[0, 1], ratios=[8], lr_grid=[0.001, 0.01, 0.1])))
    jobs = expand(suite)
    model = CostModel(calibration(factorize={"svd": {"a": 1e-3, "b": 1.0}}))
    svd = {j.seed: j for j in jobs if j.method == "svd"}
    assert tuner_keys(jobs) == {svd[0].key, next(j.key for j in jobs if j.method == "dense" and j.seed == 0)}
    n_train, n_val, n_test = split_sizes(svd[0])
    assert (n_train, n_val, n_test) == (1294, 144, 359)  # 1,438 digits train images, 10 % val
    fact = 1e-3 * (32 * 16 * 9 + 128 * 64)  # conv2 (32x16x3x3) and fc1 (64->128) weights
    assert model.factorize_s(svd[0]) == pytest.approx(fact)
    ep = svd[0].finetune["epochs"]
    one = n_train * ep / 1000 + math.ceil(ep) * n_val / 10000
    evals = (2 * n_test + n_val) / 10000
    assert model.job_s(svd[1], tuning=False) == pytest.approx(fact + one + evals)
    assert model.job_s(svd[0], tuning=True) == pytest.approx(fact + 3 * (one + n_val / 10000) + evals)
    dense = next(j for j in jobs if j.method == "dense")
    base = n_train * dense.train["epochs"] / 1000 + (math.ceil(dense.train["epochs"]) * n_val + n_val + n_test) / 1e4
    assert model.baseline_s(dense) == pytest.approx(base)
    assert model.job_s(dense, True, with_baseline=True) == pytest.approx(base + evals)
    total, per_job = model.suite_s(jobs)
    assert total == pytest.approx(sum(per_job.values())) and len(per_job) == len(jobs)


def test_budget_admits_by_time_left_and_pays_each_baseline_once(tiny_suite, monkeypatch, tmp_path):
    now = [0.0]
    monkeypatch.setattr(bench.cost, "CLOCK", lambda: now[0])
    jobs = expand(load_suite(str(tiny_suite(ratios=[8]))))
    dense, svd = jobs
    model = CostModel(calibration(factorize={"svd": {"a": 0.0, "b": 1.0}}))
    base = model.baseline_s(dense)
    budget = Budget(base + model.job_s(dense, True) + 1e-9, model, jobs, baseline_root=tmp_path)
    assert budget.estimate(svd) == pytest.approx(base + model.job_s(svd, True))  # nobody paid yet
    assert budget(dense)                      # baseline + dense fit exactly
    assert budget.estimate(svd) == pytest.approx(model.job_s(svd, True))  # baseline now paid
    now[0] = budget.seconds - model.job_s(svd, True) / 2
    assert not budget(svd)                    # half of it is left
    now[0] = 0.0
    assert budget(svd)
    fresh = Budget(1.0, model, jobs, baseline_root=tmp_path)
    monkeypatch.setattr(bench.cost, "baseline_cached", lambda root, job: True)
    assert fresh.estimate(dense) == pytest.approx(model.job_s(dense, True))  # cached: free


def test_priority_orders_stages_and_keeps_tuning_seed_first():
    jobs = expand(load_suite("cifar10-headline"))
    stages = [j.stage for j in jobs]
    n = len([j for j in jobs if j.seed == 0])
    assert stages[0] == "baselines" and jobs[0].method == "dense" and jobs[0].seed == 0
    assert set(stages[1:11]) == {"headline"} and all(j.target_ratio == 2191.57 for j in jobs[1:11])
    assert set(stages[11:n]) == {"budgets"} and {j.seed for j in jobs[:n]} == {0}
    assert stages[n:] == ["seeds"] * (len(jobs) - n) and [j.seed for j in jobs[n:]] == sorted(j.seed for j in jobs[n:])
    assert jobs[n].method == "dense" and jobs[n + 1].target_ratio == 2191.57
    first_tuner = {j.key for j in jobs[:n]}
    assert tuner_keys(jobs) <= first_tuner | {j.key for j in jobs if j.method == "dense"}
    plain = expand(load_suite("cifar10-headline", ["priority=null"]))
    assert [j.key for j in plain] != [j.key for j in jobs] and {j.key for j in plain} == {j.key for j in jobs}


@pytest.mark.parametrize("override, message", [
    ("priority=[baselines, fastest]", "priority: unknown stage 'fastest'; valid: baselines, headline, budgets, seeds"),
    ("priority=[seeds, seeds]", "priority: 'seeds' is listed twice"),
    ("priority=baselines", "priority 'baselines': expected a list of stages"),
    ("headline_ratio=7", "headline_ratio 7 is not one of ratios"),
    ("headline_ratio=-1", "headline_ratio -1: expected a finite number > 0"),
    ("budget_tolerance=0.5", "budget_tolerance 0.5: expected a finite number >= 1"),
    ("factorize_time_cap_s=[1]", "factorize_time_cap_s [1]: expected a finite number of seconds > 0"),
])
def test_bad_priority_keys_are_one_line_errors(override, message):
    with pytest.raises(SuiteError) as e:
        load_suite("cifar10-headline", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_priority_headline_needs_headline_ratio(capsys):
    assert main(["--suite", "cifar10-headline", "--set", "headline_ratio=null", "--dry-run"]) == 2
    assert "priority lists 'headline' but the suite has no headline_ratio" in capsys.readouterr().err


def test_planned_skips_unreachable_budget_and_capped_factorisation():
    jobs = {(j.method, j.target_ratio): j for j in expand(load_suite("cifar10-headline", ["seeds=[0]"]))}
    svd = planned_skip(jobs[("svd", 2191.57)])
    assert svd["status"] == "skipped" and "the smallest svd has 20,992 parameters, 2.44x the budget of 8,616" in svd["error"]
    assert planned_skip(jobs[("svd", 1024.0)]) is None  # 20,992 vs 18,440: within 1.25x
    assert planned_skip(jobs[("tt", 2191.57)]) is None and planned_skip(jobs[("prune", 2191.57)]) is None
    model = CostModel(calibration(networks=("vgg16",), factorize={"cp": {"a": 1e-5, "b": 1.0}}))
    cp = planned_skip(jobs[("cp", 32.0)], model)  # 1e-5 s x 18,874,368 weights = 189 s > 120
    assert cp["time_cap_s"] == 120 and cp["estimate_factorize_s"] == pytest.approx(188.74368)
    assert "estimated factorisation time 189 s exceeds factorize_time_cap_s 120" in cp["error"]
    assert planned_skip(jobs[("tt", 32.0)], model) is None  # no calibration entry: not capped


def test_time_capped_job_is_recorded_skipped_and_reconsidered_with_a_new_cap(tmp_path, tiny_suite, capsys):
    suite = tiny_suite(ratios=[8], factorize_time_cap_s=5)
    cal = write_cal(tmp_path / "cal.json", factorize={"svd": {"a": 1e-3, "b": 1.0}})  # 16.8 s
    args = ["--suite", str(suite), "--out", str(tmp_path), "--calibration", str(cal), "--no-progress"]
    assert main(args) == 0
    rec = {r["method"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert rec["svd"]["status"] == "skipped" and "exceeds factorize_time_cap_s 5" in rec["svd"]["error"]
    assert main(args) == 0 and "2 already done" in capsys.readouterr().out  # same cap: still done
    assert main(args + ["--set", "factorize_time_cap_s=60"]) == 0
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert [r["status"] for r in recs if r["method"] == "svd"] == ["skipped", "ok"]


def test_calibrate_writes_a_small_json(tmp_path, capsys):
    from bench.perf.calibrate import main as calibrate

    out = tmp_path / "cal.json"
    assert calibrate(["--device", "cpu", "--networks", "digitnet", "--methods", "svd,adtn", "--sizes", "16,32",
                      "--out", str(out)]) == 0
    cal = bench.cost.load_calibration(out)
    assert cal["device"] == "cpu" and cal["networks"]["digitnet"]["train_img_s"] > 0
    assert set(cal["factorize"]) == {"svd", "adtn"} and cal["factorize"]["adtn"]["per_step"]
    assert [p[0] for p in cal["factorize"]["svd"]["points"]] == [256, 1024]
    assert "wrote" in capsys.readouterr().out


def test_dry_run_estimates_with_a_calibration_and_says_when_there_is_none(tmp_path, tiny_suite, capsys,
                                                                          monkeypatch):
    suite = str(tiny_suite(ratios=[8]))
    assert main(["--suite", suite, "--dry-run", "--calibration", str(write_cal(tmp_path / "c.json"))]) == 0
    out = capsys.readouterr().out
    assert "est " in out and "(baselines)" in out and "total:" in out
    assert main(["--suite", suite, "--dry-run", "--device", "cuda", "--calibration", str(tmp_path / "no.json")]) == 2
    assert "--calibration" in capsys.readouterr().err
    monkeypatch.setattr(bench.cost, "CALIBRATION_DIR", tmp_path / "none")
    assert main(["--suite", suite, "--dry-run", "--device", "cuda"]) == 0  # no CUDA needed to estimate
    out = capsys.readouterr().out
    assert "no time estimates: no calibration for cuda" in out and "est " not in out


def test_time_budget_needs_a_calibration_and_a_positive_budget(tmp_path, tiny_suite, capsys, monkeypatch):
    suite = str(tiny_suite())
    monkeypatch.setattr(bench.cost, "CALIBRATION_DIR", tmp_path / "none")
    assert main(["--suite", suite, "--out", str(tmp_path), "--time-budget", "5"]) == 2
    err = capsys.readouterr().err
    assert "--time-budget needs a calibration for cpu" in err and len(err.strip().splitlines()) == 1
    assert main(["--suite", suite, "--out", str(tmp_path), "--time-budget", "0"]) == 2
    assert "--time-budget 0: expected a number of minutes > 0" in capsys.readouterr().err
    cal = write_cal(tmp_path / "c.json", networks=("fc2",))
    assert main(["--suite", suite, "--out", str(tmp_path), "--time-budget", "5", "--calibration", str(cal)]) == 2
    assert "has no network digitnet" in capsys.readouterr().err
    assert not (tmp_path / "tiny0").exists()
