"""Sweeps that survive dead workers, lost jobs, each other and broken plugins; the contract
check that fails a job whose module holds more parameters than its method said."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.cli import main
from bench.records import read_records
from tests.conftest import REPO, slow_factorize

LEAKY = """
def factorize(self, layer, rank):
    module = super().factorize(layer, rank)
    module.original = layer  # keeps a reference to the dense layer inside its module (a plugin bug)
    return module
"""
DYING = """
def factorize(self, layer, rank):
    if rank <= 2:
        os._exit(9)  # the worker process dies without a word, as under kill -9
    return super().factorize(layer, rank)
"""


def _run(*args) -> int:
    return main([*map(str, args), "--no-progress"])


def test_module_larger_than_layer_params_fails_the_job(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("leaky-svd", LEAKY)
    suite = tiny_suite(methods=["leaky-svd"], ratios=[2])
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path) == 1
    (rec,) = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert rec["status"] == "failed"
    assert "ContractError" in rec["error"] and "layer_params said" in rec["error"]


def test_dead_worker_fails_its_jobs_and_the_sweep_exits_1(tmp_path, tiny_suite, svd_plugin, capsys):
    plugin = svd_plugin("dying-svd", DYING, imports="import os")
    suite = tiny_suite(methods=["dying-svd"], ratios=[2, 64], seeds=[0, 1])
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path, "--devices", "cpu,cpu") == 1
    out = capsys.readouterr().out
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert len(recs) == 4 and len({r["key"] for r in recs}) == 4  # every job recorded once
    died = [r for r in recs if r["status"] == "failed"]
    assert died and all("died (exit code 9)" in r["error"] for r in died)
    assert "4 jobs, 0 already done" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_worker_that_cannot_start_loses_no_job(tmp_path, tiny_suite):
    """A worker whose device fails (cuda:0 here) reports its jobs failed: counts add up."""
    from bench.backends.local import run_parallel
    from bench.runner import RunSettings, _groups
    from bench.suite import expand, load_suite

    jobs = expand(load_suite(str(tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1]))))
    settings = RunSettings(out=tmp_path, data_dir=None, progress=False)
    recs = list(run_parallel(_groups(jobs), settings, ["cpu", "cuda:0"]))
    assert sorted(r["key"] for r in recs) == sorted(j.key for j in jobs)
    failed = [r for r in recs if r["status"] == "failed"]
    assert failed and all("cuda:0 stopped" in r["error"] for r in failed)


def test_cuda_devices_on_a_cpu_machine_are_refused_up_front(tmp_path, tiny_suite, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _run("--suite", tiny_suite(), "--out", tmp_path, "--devices", "cpu,cuda:0") == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.glob("*/runs.jsonl"))


def test_two_concurrent_sweeps_split_the_work(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("slow-svd", slow_factorize(0.5), imports="import time")
    suite = tiny_suite(methods=["slow-svd"], ratios=[2, 3, 4, 6, 8, 12, 16, 24])
    cmd = [sys.executable, "run_all.py", "--plugin", str(plugin), "--suite", str(suite), "--no-progress",
           "--out", str(tmp_path)]
    first = subprocess.run(cmd + ["--set", "protocol.seeds=[0]"], cwd=REPO, capture_output=True)  # the baseline, cached
    assert first.returncode == 0, first.stderr.decode()
    (tmp_path / suite.stem / "runs.jsonl").unlink()
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-500:] for o in outs]
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert sorted(r["budget"] for r in recs) == sorted(f"x{r}" for r in [2, 3, 4, 6, 8, 12, 16, 24])
    summaries = [o[0].decode() for o in outs]
    assert any("left to another sweep" in s for s in summaries), summaries


def test_two_plugins_with_the_same_file_name_both_load(tmp_path, tiny_suite, svd_plugin):
    a, b = tmp_path / "a" / "plug.py", tmp_path / "b" / "plug.py"
    for path, name in ((a, "plug-a"), (b, "plug-b")):
        svd_plugin(name, path=path)
    suite = tiny_suite(methods=["plug-a", "plug-b"], ratios=[2])
    assert _run("--plugin", a, "--plugin", b, "--suite", suite, "--out", tmp_path) == 0
    assert {r["method"] for r in read_records(tmp_path / suite.stem / "runs.jsonl")} == {"plug-a", "plug-b"}


def test_methods_accepts_a_plugin_method_beside_the_suite(tmp_path, tiny_suite, svd_plugin, capsys):
    plugin = svd_plugin("fast-svd")
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2])
    assert _run("--suite", suite, "--out", tmp_path) == 0
    assert _run("--plugin", plugin, "--suite", suite, "--out", tmp_path, "--methods", "fast-svd") == 0
    table = (tmp_path / suite.stem / "table.md").read_text()
    assert "fast-svd" in table and "| svd" in table  # the table keeps every method
