"""The runner end to end on the embedded digits: records, resume, failures, CLI errors."""
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.cli import main
from bench.records import append_record, latest_by_key, read_records
from bench.environment import cpu_id, cpu_model
from tests.conftest import REPO, records_by_budget, slow_factorize

RECORD_FIELDS = {
    "suite", "network", "dataset", "method", "options", "target_ratio", "knobs", "seed", "params_dense_layers",
    "params_compressed_layers", "achieved_ratio", "params_total", "acc_dense", "acc_before_finetune",
    "acc_after_finetune", "fit_rel_error", "flops", "time_compress_s", "time_finetune_s", "status", "error",
    "data_fingerprint", "code_version", "env", "key", "layer_info"}

FAILING = """
def factorize(self, layer, rank):
    if rank > 4:
        raise RuntimeError("deliberate failure")
    return super().factorize(layer, rank)
"""


def _run(*args) -> int:
    return main([*map(str, args), "--no-progress"])


def test_suite_runs_records_and_reports(tmp_path, tiny_suite):
    suite = tiny_suite()
    assert _run("--suite", suite, "--out", tmp_path) == 0
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    for r in recs:
        assert RECORD_FIELDS <= set(r), RECORD_FIELDS - set(r)
        assert r["env"]["cpu_model"] == cpu_model() != ""  # the cost model's corrections are per processor
        assert r["env"]["cpu_id"] == cpu_id() != ""  # baselines are deterministic per processor kind
    svd = [r for r in recs if r["method"] == "svd"]
    for r in svd:
        assert r["params_compressed_layers"] == sum(v["params"] for v in r["layer_info"].values())
        assert r["achieved_ratio"] == pytest.approx(r["params_dense_layers"] / r["params_compressed_layers"])
        assert 0 < r["fit_rel_error"] < 1
        assert 0 <= r["time_allocate_s"] < r["time_total_s"]  # the cost model's factorize stage counts it
    dense = next(r for r in recs if r["method"] == "dense")
    assert dense["fit_rel_error"] == 0 and dense["acc_after_finetune"] == dense["acc_dense"]
    assert (tmp_path / suite.stem / "table.md").read_text().count("| svd |") == 2
    assert (tmp_path / suite.stem / "plots" / "accuracy_vs_params_digitnet_digits.png").stat().st_size > 0
    assert list((tmp_path / "checkpoints").glob("*.pt"))


def test_second_run_executes_zero_jobs(tmp_path, tiny_suite, capsys):
    suite = tiny_suite()
    assert _run("--suite", suite, "--out", tmp_path) == 0
    assert _run("--suite", suite, "--out", tmp_path) == 0
    assert "3 already done, 0 ok" in capsys.readouterr().out
    assert len(read_records(tmp_path / suite.stem / "runs.jsonl")) == 3


def test_rerun_runs_selected_jobs_again_and_latest_record_wins(tmp_path, tiny_suite, capsys):
    suite = tiny_suite()
    assert _run("--suite", suite, "--out", tmp_path) == 0
    capsys.readouterr()
    assert _run("--suite", suite, "--out", tmp_path, "--methods", "svd", "--rerun") == 0
    assert "0 already done, 2 ok" in capsys.readouterr().out
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert [r["method"] for r in recs].count("svd") == 4 and [r["method"] for r in recs].count("dense") == 1
    latest = latest_by_key(recs)
    assert len(latest) == 3
    newest_svd = [r for r in recs if r["method"] == "svd"][2:]
    assert all(latest[r["key"]] is r for r in newest_svd)


def test_one_sweep_reads_its_records_file_once(tmp_path, tiny_suite, monkeypatch):
    """The sweep's resume check, claims, lr picks and appends share one ``RecordIndex``: every
    byte of runs.jsonl is read once (it used to be re-read for each claimed job and pass)."""
    import bench.records as records

    made = []

    class Counting(records.RecordIndex):
        def __init__(self, path):
            super().__init__(path)
            made.append(self)

    monkeypatch.setattr(records, "RecordIndex", Counting)
    suite = tiny_suite()
    for _ in range(2):  # a fresh run, then a resume with nothing to do
        assert _run("--suite", suite, "--out", tmp_path) == 0
        path = tmp_path / suite.stem / "runs.jsonl"
        index = made[-1]
        assert index.path == path and len(index.latest) == 3
        assert index.bytes_read == path.stat().st_size


def test_override_changes_job_keys(tmp_path, tiny_suite):
    suite = tiny_suite()
    assert _run("--suite", suite, "--out", tmp_path) == 0
    assert _run("--suite", suite, "--out", tmp_path, "--set", "ratios=[3]") == 0
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert sorted(r["budget"] for r in recs) == ["x1", "x2", "x3", "x8"]


def test_killed_run_resumes_to_same_ok_set(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("slow-svd", slow_factorize(0.4), imports="import time")
    suite = tiny_suite(methods=["slow-svd"], ratios=[2, 3, 4, 6, 8, 12])
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    records = out_a / suite.stem / "runs.jsonl"
    cmd = [sys.executable, "run_all.py", "--plugin", str(plugin), "--suite", str(suite), "--no-progress"]
    proc = subprocess.Popen(cmd + ["--out", str(out_a)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_records(records)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(read_records(records))
    assert 2 <= written < 6, "the kill must land mid-sweep"
    with open(records, "a") as f:  # a torn line, as a kill inside a write would leave
        f.write('{"key": "torn", "status": "o')
    assert subprocess.run(cmd + ["--out", str(out_a)], cwd=REPO, capture_output=True).returncode == 0
    assert subprocess.run(cmd + ["--out", str(out_b)], cwd=REPO, capture_output=True).returncode == 0
    lines = records.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no broken line left
    ok_a = {r["key"] for r in read_records(records) if r["status"] == "ok"}
    ok_b = {r["key"] for r in read_records(out_b / suite.stem / "runs.jsonl") if r["status"] == "ok"}
    assert ok_a == ok_b and len(ok_a) == 6 and len(lines) == 6


def test_failed_job_is_recorded_and_sweep_goes_on(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("broken-svd", FAILING)
    suite = tiny_suite(methods=["broken-svd"], ratios=[1.2, 16])
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path) == 1
    recs = records_by_budget(tmp_path, suite)
    assert recs["x1.2"]["status"] == "failed" and "deliberate failure" in recs["x1.2"]["error"]
    assert recs["x16"]["status"] == "ok"
    # a re-run retries only the failed job
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path) == 1
    assert len(read_records(tmp_path / suite.stem / "runs.jsonl")) == 3


@pytest.mark.parametrize("args, message", [
    (["--suite", "nosuch"], "unknown suite 'nosuch'; known: .*smoke"),
    (["--suite", "smoke", "--set", "bogus=1"], "unknown key 'bogus'; valid: .*ratios"),
    (["--suite", "smoke", "--set", "finetune.lrr=1"], r"unknown finetune key\(s\) \['lrr'\]; valid: .*lr"),
    (["--suite", "smoke", "--set", "methods=[nosuch]"], "unknown method 'nosuch'; known: .*svd"),
    (["--suite", "smoke", "--set", "networks={nonet: [fc1]}"], "unknown network 'nonet'; known: .*lenet5"),
    (["--suite", "smoke", "--set", "datasets=[nodata]"], "unknown dataset 'nodata'; known: .*mnist"),
    (["--suite", "smoke", "--set", "noequals"], "--set takes key=value"),
    (["--suite", "smoke", "--methods", "nosuch"], r"--methods \['nosuch'\] not in suite"),
])
def test_bad_names_fail_with_one_line_listing_choices(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re
    assert re.search(message, err), err


def test_dry_run_plans_without_training(tmp_path, capsys):
    assert _run("--suite", "mnist", "--dry-run", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "fc2/mnist" in out and "lenet5/mnist" in out and "params" in out
    assert not (tmp_path / "checkpoints").exists()


def test_report_only_rebuilds_from_records(tmp_path, tiny_suite):
    suite = tiny_suite()
    assert _run("--suite", suite, "--out", tmp_path) == 0
    table = tmp_path / suite.stem / "table.md"
    before = table.read_text()
    table.unlink()
    assert _run("--suite", suite, "--out", tmp_path, "--report-only") == 0
    assert table.read_text() == before


def test_records_survive_torn_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"key": "a", "status": "ok"})
    with open(path, "a") as f:
        f.write('{"key": "b", "sta')
    append_record(path, {"key": "c", "status": "ok"})
    assert [r["key"] for r in read_records(path)] == ["a", "c"]


def test_fit_only_mode(tmp_path, tiny_suite):
    suite = tiny_suite()
    assert _run("--suite", suite, "--out", tmp_path, "--fit-only") == 0
    recs = read_records(tmp_path / suite.stem / "fit_runs.jsonl")
    assert len(recs) == 2 and all(r["status"] == "ok" and "acc_after_finetune" not in r for r in recs)
    assert (tmp_path / suite.stem / "plots" / "fit_error_vs_params_digitnet_digits.png").stat().st_size > 0
    assert "conv2" in (tmp_path / suite.stem / "fit_table.md").read_text()


def test_parallel_devices_match_serial(tmp_path, tiny_suite):
    suite = tiny_suite(seeds=[0, 1], ratios=[4])
    assert _run("--suite", suite, "--out", tmp_path / "serial") == 0
    assert _run("--suite", suite, "--out", tmp_path / "par", "--devices", "cpu,cpu") == 0
    a = {r["key"]: r for r in read_records(tmp_path / "serial" / suite.stem / "runs.jsonl")}
    b = {r["key"]: r for r in read_records(tmp_path / "par" / suite.stem / "runs.jsonl")}
    assert a.keys() == b.keys() and len(a) == 4
    for k in a:
        assert a[k]["acc_after_finetune"] == b[k]["acc_after_finetune"]


def test_smoke_suite_end_to_end(tmp_path):
    assert _run("--suite", "smoke", "--out", tmp_path) == 0
    recs = read_records(tmp_path / "smoke" / "runs.jsonl")
    assert recs and all(r["status"] in ("ok", "skipped") for r in recs)
    assert (tmp_path / "smoke" / "table.md").exists()
    assert list((tmp_path / "smoke" / "plots").glob("accuracy_vs_params_*.png"))


def test_saturated_budgets_reuse_the_identical_job(tmp_path, tiny_suite):
    suite = tiny_suite(methods=["svd"], ratios=[100, 1000])
    assert _run("--suite", suite, "--out", tmp_path) == 0
    recs = records_by_budget(tmp_path, suite)
    assert recs["x1000"]["same_as"] == recs["x100"]["key"]
    assert recs["x1000"]["knobs"] == recs["x100"]["knobs"] == {"conv2": 1, "fc1": 1}
    assert recs["x1000"]["acc_after_finetune"] == recs["x100"]["acc_after_finetune"]
    assert recs["x1000"]["target_ratio"] == 1000


def test_a_saturated_budget_copies_a_record_of_an_earlier_run(tmp_path, tiny_suite, capsys):
    """The copy of an identical allocation does not depend on both budgets running in one
    sweep: a sweep resumed after one that recorded x100 (or records adopted from another
    suite) copies x1000 from the record, on every seed, with the tuning seed's pick."""
    suite = tiny_suite(methods=["svd"], ratios=[100, 1000], seeds=[0, 1], lr_grid=[0.01, 0.03])
    assert _run("--suite", suite, "--out", tmp_path, "--set", "ratios=[100]") == 0
    first = {r["seed"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert len(first) == 2 and all(r["status"] == "ok" for r in first.values())
    capsys.readouterr()
    assert _run("--suite", suite, "--out", tmp_path) == 0
    assert "2 already done, 2 ok" in capsys.readouterr().out
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert len(recs) == 4
    for rec in recs[2:]:
        earlier = first[rec["seed"]]
        assert rec["target_ratio"] == 1000 and rec["same_as"] == earlier["key"] and rec["time_total_s"] == 0
        assert rec["acc_after_finetune"] == earlier["acc_after_finetune"] and rec["knobs"] == earlier["knobs"]
    assert recs[3]["lr_tuning"]["pick"] == first[0]["lr_tuning"]["pick"]


def test_a_record_of_another_baseline_is_not_copied_once_the_baseline_is_trained(tmp_path, tiny_suite, capsys):
    """A record taken before the checkpoint existed (adopted from another suite, or left by
    another machine whose baseline does not retrain to the same weights) measures another
    baseline: once this sweep trains its own, no job is recorded as that record's copy."""
    import json
    import shutil

    suite = tiny_suite(methods=["svd"], ratios=[100, 1000])
    assert _run("--suite", suite, "--out", tmp_path, "--set", "ratios=[100]") == 0
    path = tmp_path / suite.stem / "runs.jsonl"
    other = read_records(path)[0]
    other["baseline_fingerprint"] = "0" * 16  # made on another machine's baseline
    path.write_text(json.dumps(other) + "\n")
    shutil.rmtree(tmp_path / "checkpoints")  # a fresh cache: the record cannot be judged stale up front
    assert _run("--suite", suite, "--out", tmp_path) == 0
    new, again = read_records(path)[1:]
    assert new["target_ratio"] == 1000 and "same_as" not in new and new["time_total_s"] > 0
    assert new["baseline_fingerprint"] != other["baseline_fingerprint"]
    assert again["target_ratio"] == 100 and again["baseline_fingerprint"] == new["baseline_fingerprint"]


def test_rerun_measures_a_saturated_budget_again(tmp_path, tiny_suite):
    """``--rerun`` asks for new measurements: earlier records are not copied."""
    suite = tiny_suite(methods=["svd"], ratios=[100, 1000])
    assert _run("--suite", suite, "--out", tmp_path, "--set", "ratios=[100]") == 0
    assert _run("--suite", suite, "--out", tmp_path, "--set", "ratios=[1000]", "--rerun") == 0
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert len(recs) == 2 and "same_as" not in recs[1] and recs[1]["time_total_s"] > 0


def test_dry_run_costs_a_copy_nothing(tmp_path, tiny_suite, capsys):
    """The dry run plans what the sweep copies (same allocation, same recipe, and for a seed
    that borrows its pick, a tuning job that is itself a copy) and costs it nothing."""
    from bench.planning import planned_copies
    from bench.jobs import expand
    from bench.suite import load_suite

    suite = tiny_suite(methods=["svd"], ratios=[8, 100, 1000], seeds=[0, 1], lr_grid=[0.01, 0.03])
    jobs = expand(load_suite(str(suite)))
    by = {(j.target_ratio, j.seed): j.key for j in jobs}
    assert planned_copies(jobs, {}) == {by[(1000, 0)]: by[(100, 0)], by[(1000, 1)]: by[(100, 1)]}
    assert _run("--suite", suite, "--out", tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"same as {by[(100, 1)]}" in out and "6 jobs, 2 of them copies" in out


def test_ray_backend_without_ray_says_how_to_install(tmp_path, tiny_suite, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["--suite", str(tiny_suite()), "--out", str(tmp_path), "--backend", "ray", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "ray" in err


UNREACHABLE = """
def allocate(self, layers, target_ratio):
    if target_ratio > 10:
        raise BudgetUnreachable(f"ratio {target_ratio} is beyond this method")
    return super().allocate(layers, target_ratio)
"""


def test_unreachable_budget_is_skipped_not_failed(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("picky-svd", UNREACHABLE, imports="from bench.compressor import BudgetUnreachable")
    suite = tiny_suite(methods=["picky-svd"], ratios=[2, 50])
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path) == 0
    recs = records_by_budget(tmp_path, suite)
    assert recs["x50"]["status"] == "skipped" and "beyond this method" in recs["x50"]["error"]
    assert recs["x2"]["status"] == "ok"


def test_report_keeps_only_current_configurations(tmp_path, tiny_suite):
    suite = tiny_suite(ratios=[2])
    assert _run("--suite", suite, "--out", tmp_path) == 0
    assert _run("--suite", suite, "--out", tmp_path, "--set", "finetune.lr=0.02") == 0
    table = (tmp_path / suite.stem / "table.md").read_text()
    assert table.count("| svd |") == 1 and "Records: 2 ok" in table  # the lr=0.01 records are left out


def test_lr_is_tuned_on_seed_0_and_reused_by_other_seeds(tmp_path, tiny_suite):
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.001, 0.05, 1.0e+6])
    assert _run("--suite", suite, "--out", tmp_path) == 0
    recs = {(r["method"], r["seed"]): r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    tuned, reused = recs[("svd", 0)]["lr_tuning"], recs[("svd", 1)]["lr_tuning"]
    assert tuned["tuned_here"] and set(tuned["val_acc"]) == {"0.001", "0.05"} and tuned["diverged"] == [1e6]
    assert tuned["pick"] == float(max(tuned["val_acc"], key=tuned["val_acc"].get))
    assert not reused["tuned_here"] and reused["pick"] == tuned["pick"]
    assert "lr_tuning" not in recs[("dense", 0)]  # nothing to tune


def test_a_run_of_later_seeds_takes_seed_0s_pick_and_never_tunes_itself(tmp_path, tiny_suite, capsys):
    """Seed 0 tunes even when a run names other seeds only: before it, ``--set protocol.seeds=[1]``
    made seed 1 its own tuning seed, under the key of the seed-1 job that must reuse seed 0's pick."""
    suite = tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.001, 0.05])
    records = tmp_path / suite.stem / "runs.jsonl"
    assert _run("--suite", suite, "--out", tmp_path, "--set", "protocol.seeds=[1]") == 0
    assert "1 waiting for the lr pick of seed 0" in capsys.readouterr().out
    assert not records.exists() or read_records(records) == []  # nothing tuned on seed 1, nothing recorded
    assert _run("--suite", suite, "--out", tmp_path, "--set", "protocol.seeds=[0]") == 0
    assert _run("--suite", suite, "--out", tmp_path, "--set", "protocol.seeds=[1]") == 0
    recs = {r["seed"]: r for r in read_records(records)}
    assert recs[0]["lr_tuning"]["tuned_here"] and not recs[1]["lr_tuning"]["tuned_here"]
    assert recs[1]["lr_tuning"]["pick"] == recs[0]["lr_tuning"]["pick"]
    capsys.readouterr()
    assert _run("--suite", suite, "--out", tmp_path) == 0  # the whole suite: both seeds already done
    assert "2 already done, 0 ok" in capsys.readouterr().out


def test_a_fit_only_run_of_a_later_seed_waits_for_nothing(tmp_path, tiny_suite, capsys):
    """A fit-only job never fine-tunes: it takes no lr pick, so it never waits for one."""
    suite = tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.001, 0.05])
    assert _run("--suite", suite, "--out", tmp_path, "--fit-only", "--set", "protocol.seeds=[1]") == 0
    assert "1 ok" in capsys.readouterr().out


def test_a_run_of_a_later_seed_trains_its_baseline_without_waiting_for_seed_0(tmp_path, tiny_suite, capsys):
    """Dense takes no lr pick: ``--set protocol.seeds=[1]`` trains seed 1's baseline and records
    its dense job while the jobs that do take seed 0's pick wait for it."""
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.001, 0.05])
    assert _run("--suite", suite, "--out", tmp_path, "--set", "protocol.seeds=[1]") == 0
    out = capsys.readouterr().out
    assert "1 ok" in out and "1 waiting for the lr pick of seed 0" in out
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert [(r["method"], r["seed"], r["status"]) for r in recs] == [("dense", 1, "ok")]


FAIL_ON_SEED0 = """
def finetune(self, model, ctx):  # seed 1 would say so too, if it were run
    raise RuntimeError("tuning run fails")
"""


def test_seeds_never_tune_themselves_when_the_tuning_job_failed(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("seed0-fails-svd", FAIL_ON_SEED0)
    suite = tiny_suite(methods=["seed0-fails-svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05])
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path) == 1
    recs = {r["seed"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert recs[0]["status"] == "failed" and "tuning run fails" in recs[0]["error"]
    assert recs[1]["status"] == "failed" and "lr pick of its tuning seed is missing" in recs[1]["error"]


def test_tune_epochs_shares_the_pick_and_reuse_takes_equal_jobs(tmp_path, tiny_suite, capsys):
    """A suite sweeping epochs with tune_epochs: its jobs at that count are the plain suite's
    (equal keys, so reuse copies their records instead of running them), and the other counts
    take the pick made there instead of tuning."""
    grid = [0.01, 0.05]
    plain = tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1], lr_grid=grid)  # 0.5 epochs
    assert _run("--suite", plain, "--out", tmp_path) == 0
    sweep = tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1], lr_grid=grid, finetune_epochs=[0.5, 1],
                       tune_epochs=0.5, reuse=[plain.stem])
    capsys.readouterr()
    assert _run("--suite", sweep, "--out", tmp_path) == 0
    assert "took 2 records of equal jobs" in capsys.readouterr().err
    recs = {(r["finetune"]["epochs"], r["seed"]): r for r in read_records(tmp_path / sweep.stem / "runs.jsonl")}
    originals = {r["seed"]: r for r in read_records(tmp_path / plain.stem / "runs.jsonl")}
    assert len(recs) == 4
    for seed in (0, 1):  # copied, not re-run: the same measurement
        assert recs[(0.5, seed)]["reused_from"] == plain.stem and recs[(0.5, seed)]["suite"] == sweep.stem
        assert recs[(0.5, seed)]["acc_after_finetune"] == originals[seed]["acc_after_finetune"]
    pick = originals[0]["lr_tuning"]["pick"]
    for seed in (0, 1):  # the 1-epoch jobs ran, with the 0.5-epoch pick of seed 0
        t = recs[(1, seed)]["lr_tuning"]
        assert "reused_from" not in recs[(1, seed)] and not t["tuned_here"] and t["pick"] == pick
        assert recs[(1, seed)]["tune_epochs"] == 0.5
    assert _run("--suite", sweep, "--out", tmp_path) == 0  # nothing left: nothing copied twice
    assert len(read_records(tmp_path / sweep.stem / "runs.jsonl")) == 4


def test_non_finite_weights_of_a_compressed_layer_fail_naming_the_layer():
    """A plugin's NaN weights must not pass as ok (with 0 fine-tuning epochs or --fit-only
    nothing else would look): check_finite names the layer and the tensor."""
    import torch
    from torch import nn

    from bench.compressor import ContractError
    from bench.job import check_finite

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    check_finite(model, ["0", "2"], "after compress")  # finite: no error
    with torch.no_grad():
        model[2].bias[1] = float("inf")
    with pytest.raises(ContractError, match="layer 2: non-finite values in bias after compress"):
        check_finite(model, ["0", "2"], "after compress")


def test_an_epoch_sweep_runs_an_epoch_blind_method_once(tmp_path, tiny_suite, capsys):
    """NN-BCD's training ignores finetune.epochs (its sweeps stop by their own rule) and dense
    is never fine-tuned: their jobs at another epoch count are copies (same_as) of the one
    measured, in the same run and from another suite's records; svd's result depends on the
    count, so it runs at each."""
    nnbcd = {"method": "nnbcd-tt", "options": {"subset": 200, "max_sweeps": 2}}
    common = dict(networks={"digitnet": ["fc1"]}, methods=["dense", nnbcd, "svd"], ratios=[2])
    first = tiny_suite(**common)  # 0.5 epochs
    assert _run("--suite", first, "--out", tmp_path) == 0
    sweep = tiny_suite(**common, finetune_epochs=[0.5, 1, 2], reuse=[first.stem])
    capsys.readouterr()
    assert _run("--suite", sweep, "--out", tmp_path) == 0
    assert "took 7 records of equal jobs" in capsys.readouterr().err  # 3 equal keys, 2 x 2 equal measurements
    by = {(r["method"], r["finetune"]["epochs"]): r for r in read_records(tmp_path / sweep.stem / "runs.jsonl")}
    assert len(by) == 9
    originals = {r["method"]: r for r in read_records(tmp_path / first.stem / "runs.jsonl")}
    for method in ("dense", "nnbcd-tt"):
        measured = originals[method]
        for epochs in (1, 2):
            copy = by[(method, epochs)]
            assert copy["same_as"] == measured["key"] != copy["key"] and copy["reused_from"] == first.stem
            assert copy["acc_after_finetune"] == measured["acc_after_finetune"] and copy["suite"] == sweep.stem
    assert all("same_as" not in by[("svd", e)] and "reused_from" not in by[("svd", e)] for e in (1, 2))
    alone = tiny_suite(**common, finetune_epochs=[0.5, 1])  # no reuse: the second count is copied within the run
    assert _run("--suite", alone, "--out", tmp_path) == 0
    by = {(r["method"], r["finetune"]["epochs"]): r for r in read_records(tmp_path / alone.stem / "runs.jsonl")}
    assert by[("nnbcd-tt", 1)]["same_as"] == by[("nnbcd-tt", 0.5)]["key"]
    assert "same_as" not in by[("svd", 1)]
    table = pd.read_csv(tmp_path / alone.stem / "table.csv")  # a measurement is one row, not one per count
    assert sorted(table.label) == ["dense", "nnbcd-tt", "svd (0.5 ep)", "svd (1 ep)"]
    assert (table.set_index("label").seeds_ok == 1).all()


def test_a_split_rule_that_picks_the_same_knobs_is_one_measurement(tmp_path, tiny_suite):
    """With one compressed layer the min-max split is the uniform one: svd-minmax copies svd's
    measurement (same_as) instead of training the same network again."""
    minmax = {"method": "svd", "label": "svd-minmax", "options": {"allocation": "minmax"}}
    suite = tiny_suite(networks={"digitnet": ["fc1"]}, methods=["svd", minmax], ratios=[4])
    assert _run("--suite", suite, "--out", tmp_path) == 0
    by = {r["label"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert by["svd-minmax"]["knobs"] == by["svd"]["knobs"]
    assert by["svd-minmax"]["same_as"] == by["svd"]["key"] and by["svd-minmax"]["options"] == {"allocation": "minmax"}
    assert by["svd-minmax"]["acc_after_finetune"] == by["svd"]["acc_after_finetune"]


def test_a_copy_of_a_minmax_record_hashes_to_the_uniform_jobs_key(tiny_suite):
    """FC-2's tt copies tt-minmax where their knobs agree: the copy must not carry the min-max
    job's ``minmax_rule`` (mnist-v3 wrote 15 such records, which the next sweep did not trust)."""
    from bench.jobs import expand, job_fields
    from bench.memo import reused_record
    from bench.records import key_matches
    from bench.suite import load_suite

    suite = tiny_suite(methods=["tt", {"method": "tt", "label": "tt-minmax", "options": {"allocation": "minmax"}}],
                       ratios=[8])
    jobs = {j.label: j for j in expand(load_suite(str(suite)))}
    earlier = {**job_fields(jobs["tt-minmax"]), "status": "ok", "acc_after_finetune": 90.0}
    assert earlier["minmax_rule"] and key_matches(earlier)
    copy = reused_record(jobs["tt"], earlier)
    assert "minmax_rule" not in copy and key_matches(copy) and copy["same_as"] == earlier["key"]


def test_a_sweep_waits_for_a_baseline_another_sweep_trains(monkeypatch, tmp_path, tiny_suite, capsys):
    """While another live sweep holds a baseline's training claim, this sweep trains nothing
    and runs none of that baseline's jobs: with nothing else to run it waits (no claim of its
    own kept meanwhile). When the trainer stops without a checkpoint (it died), the wait ends
    and this sweep trains the baseline and runs the jobs itself."""
    import os

    import bench.backends.local as local
    from bench.baseline import checkpoint_path
    from bench.claims import Claims
    from bench.suite import expand, load_suite

    suite = tiny_suite(methods=["dense", "svd"], ratios=[2])
    job = expand(load_suite(str(suite)))[0]
    ckpt = checkpoint_path(tmp_path, job.baseline_config)
    trainer = Claims(ckpt.parent / "training.claims", pid=os.getppid())  # alive, not this process
    assert trainer.try_claim(ckpt.stem)
    claims = tmp_path / suite.stem / "runs.claims"
    seen = []

    def sleep(s):  # during the waits: nothing trained here, nothing claimed; the trainer stops
        seen.append((ckpt.exists(), sorted(p.name for p in claims.iterdir())))
        if len(seen) == 2:
            trainer.release(ckpt.stem)

    monkeypatch.setattr(local, "_sleep", sleep)
    assert main(["--suite", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen == [(False, [".lock"])] * 2
    out = capsys.readouterr()
    assert "waiting for another process to train the baseline of" in out.err
    assert "2 jobs, 0 already done, 2 ok" in out.out and ckpt.exists()


def test_a_sweep_waits_for_an_lr_pick_another_sweep_is_making(monkeypatch, tmp_path, tiny_suite, capsys):
    """Seed 1 reuses seed 0's pick. While another live sweep holds seed 0's tuning job, this
    sweep leaves that job to it and, with nothing else to run, waits for its record instead of
    exiting; once the record lands it runs seed 1 with that pick."""
    import json
    import os

    import bench.runner as runner
    from bench.claims import Claims

    suite = tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05])
    path = tmp_path / suite.stem / "runs.jsonl"
    args = ["--suite", str(suite), "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--set", "protocol.seeds=[0]"]) == 0  # the tuning record the other sweep will write
    tuner = read_records(path)[0]
    assert tuner["lr_tuning"]["tuned_here"]
    path.write_text("")
    other = Claims(tmp_path / suite.stem / "runs.claims", pid=os.getppid())  # alive, not this process
    assert other.try_claim(tuner["key"])
    sleeps = []

    def sleep(s):  # the other sweep finishes seed 0 during the second wait
        sleeps.append(s)
        if len(sleeps) == 2:
            path.write_text(json.dumps(tuner) + "\n")
            other.release(tuner["key"])

    monkeypatch.setattr(runner, "_sleep", sleep)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr()
    assert "waiting for the lr picks of 1 jobs, which another sweep is making" in out.err
    assert "2 jobs, 0 already done, 1 ok, 0 failed, 0 skipped, 1 left to another sweep" in out.out
    seed1 = [r for r in read_records(path) if r["seed"] == 1]
    assert sleeps == [runner.PICK_POLL_S] * 2 and len(seed1) == 1 and seed1[0]["status"] == "ok"
    assert seed1[0]["lr_tuning"]["pick"] == tuner["lr_tuning"]["pick"] and not seed1[0]["lr_tuning"]["tuned_here"]


def test_a_copy_of_a_job_another_sweep_is_running_is_left_to_that_sweep(monkeypatch, tiny_suite, tmp_path):
    """svd at 64x and 128x is one measurement (rank 1 both): while another live sweep runs the
    64x job, this sweep leaves the 128x job to it (that sweep copies it when it gets there)
    instead of measuring the same thing at the same time; with nobody else on 64x it runs both."""
    import os

    import torch

    import bench.backends.local as local
    from bench.backends import CLAIMED, Marker
    from bench.claims import Claims
    from bench.planning import planned_memo_key
    from bench.records import RecordIndex
    from bench.runner import JobClaimer, RunSettings
    from bench.suite import expand, load_suite

    jobs = expand(load_suite(str(tiny_suite(methods=["svd"], ratios=[64, 128, 8]))))
    first, copy, other = jobs
    assert planned_memo_key(first, {}) == planned_memo_key(copy, {}) != planned_memo_key(other, {})
    monkeypatch.setattr(local, "_baseline", lambda job, *a: (None, {}, None))
    monkeypatch.setattr(local, "run_job", lambda job, *a, **k: {"key": job.key})
    settings = RunSettings(out=tmp_path, data_dir=None, progress=False)
    claims = Claims(tmp_path / "runs.claims")
    elsewhere = Claims(tmp_path / "runs.claims", pid=os.getppid())  # another live sweep
    assert elsewhere.try_claim(first.key)
    claimer = JobClaimer(claims, RecordIndex(tmp_path / "runs.jsonl"), rerun=False)
    out = list(local.run_groups([jobs], settings, torch.device("cpu"), claimer))
    assert [(o.key, o.status) if isinstance(o, Marker) else o["key"] for o in out] == [
        (first.key, CLAIMED), (copy.key, CLAIMED), other.key]
    elsewhere.release(first.key)
    claims.release_all_mine()  # this sweep's own claim on 64x (held until its record is written) keeps nothing back
    out = list(local.run_groups([jobs], settings, torch.device("cpu"), claimer))
    assert [o["key"] for o in out] == [first.key, copy.key, other.key]


def test_a_handed_group_is_taken_back_once_its_baseline_is_trained(monkeypatch, tiny_suite, tmp_path):
    """A group whose baseline another process trains is handed to it (HANDED markers), and the
    sweep takes it back before its next job once that baseline is trained: the group its
    priority put first runs here as soon as it can instead of all of it waiting on the trainer.
    While it trains, nothing of the group runs; a sweep with nothing else left waits for it
    rather than leaving its share of the group to the trainer."""
    import torch

    import bench.backends.local as local
    from bench.backends import HANDED, Marker
    from bench.baseline import BaselineInTraining
    from bench.runner import RunSettings
    from bench.suite import expand, load_suite

    jobs = expand(load_suite(str(tiny_suite(methods=["svd"], ratios=[2, 4], seeds=[0, 1]))))
    first = [j for j in jobs if j.seed == 1]  # handed: its baseline trains elsewhere
    later = [j for j in jobs if j.seed == 0]
    trained = {"seed 1": False}
    monkeypatch.setattr(local, "_baseline", lambda job, *a: (None, {}, None) if job.seed == 0 or trained["seed 1"]
                        else (_ for _ in ()).throw(BaselineInTraining("trained by pid 1")))
    monkeypatch.setattr(local, "in_training", lambda root, config: not trained["seed 1"])

    def run_job(job, *a, **k):
        if job.key == later[0].key:
            trained["seed 1"] = True  # the other process saves seed 1's checkpoint meanwhile
        return {"key": job.key}

    monkeypatch.setattr(local, "run_job", run_job)
    settings = RunSettings(out=tmp_path, data_dir=None, progress=False)
    handed = local.HandedToTrainers()
    out = list(local.run_groups([first, later], settings, torch.device("cpu"), handed=handed))
    keys = [(o.key, o.status) if isinstance(o, Marker) else o["key"] for o in out]
    assert keys == ([(j.key, HANDED) for j in first] + [later[0].key] + [j.key for j in first]
                    + [j.key for j in later[1:]])
    assert handed.drain() == []

    trained["seed 1"] = False  # still training when this sweep has nothing else left: it waits
    sleeps = []

    def sleep(s):  # the trainer saves seed 1's checkpoint during the third wait
        sleeps.append(s)
        trained["seed 1"] = len(sleeps) >= 3

    monkeypatch.setattr(local, "_sleep", sleep)
    monkeypatch.setattr(local, "run_job", lambda job, *a, **k: {"key": job.key})
    handed = local.HandedToTrainers()
    out = list(local.run_groups([first, later], settings, torch.device("cpu"), handed=handed))
    keys = [(o.key, o.status) if isinstance(o, Marker) else o["key"] for o in out]
    assert keys == [(j.key, HANDED) for j in first] + [j.key for j in later] + [j.key for j in first]
    assert sleeps == [local.HANDED_POLL_S] * 3 and handed.drain() == []
