"""The Ray backend on a local 2-CPU Ray instance: same records as local, resume across
backends, retries of crashed tasks."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bench.cli import main
from bench.records import read_records
from tests.conftest import REPO, records_by_budget

ray = pytest.importorskip("ray")

CRASH_PLUGIN = textwrap.dedent('''
    import os
    from pathlib import Path
    from bench.registry import register_method
    from methods.svd import TruncatedSVD

    MARKER = Path({marker!r})

    @register_method("crash-once-svd")
    class CrashOnce(TruncatedSVD):
        def factorize(self, layer, rank):
            if not MARKER.exists():
                MARKER.write_text("crashed")
                os._exit(1)          # the worker process dies, as on a lost node
            return super().factorize(layer, rank)

    @register_method("crash-always-svd")
    class CrashAlways(TruncatedSVD):
        def factorize(self, layer, rank):
            os._exit(1)
''')


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


def _keys(path, status="ok"):
    return {r["key"] for r in read_records(path) if r["status"] == status}


def test_ray_matches_local_backend(tmp_path, tiny_suite, local_ray):
    suite = tiny_suite(ratios=[2, 8])
    assert main(["--suite", str(suite), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert main(["--suite", str(suite), "--out", str(tmp_path / "ray"), "--backend", "ray", "--no-progress"]) == 0
    local, on_ray = (_keys(tmp_path / d / suite.stem / "runs.jsonl") for d in ("local", "ray"))
    assert local == on_ray and len(local) == 3
    assert all(r["backend"] == "ray" for r in read_records(tmp_path / "ray" / suite.stem / "runs.jsonl"))


def test_saturated_budgets_run_once_on_ray_as_locally(tmp_path, tiny_suite, local_ray):
    suite = tiny_suite(methods=["svd"], ratios=[100, 1000])
    assert main(["--suite", str(suite), "--out", str(tmp_path), "--backend", "ray", "--no-progress"]) == 0
    recs = records_by_budget(tmp_path, suite)
    assert recs["x1000"]["same_as"] == recs["x100"]["key"] and "same_as" not in recs["x100"]
    assert recs["x1000"]["knobs"] == recs["x100"]["knobs"] == {"conv2": 1, "fc1": 1}
    assert recs["x1000"]["acc_after_finetune"] == recs["x100"]["acc_after_finetune"]
    assert recs["x1000"]["target_ratio"] == 1000 and recs["x1000"]["key"] != recs["x100"]["key"]


def test_crashed_task_is_retried_and_permanent_crash_recorded(tmp_path, tiny_suite, local_ray):
    plugin = tmp_path / "crash.py"
    plugin.write_text(CRASH_PLUGIN.format(marker=str(tmp_path / "marker")))
    suite = tiny_suite(methods=["dense", "crash-once-svd", "crash-always-svd"], ratios=[4])
    code = main(["--plugin", str(plugin), "--suite", str(suite), "--out", str(tmp_path), "--backend", "ray",
                 "--no-progress"])
    recs = {r["method"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert code == 1
    assert (tmp_path / "marker").exists()  # it did crash once ...
    assert recs["crash-once-svd"]["status"] == "ok"  # ... and the retry succeeded
    assert recs["crash-always-svd"]["status"] == "failed" and "retries" in recs["crash-always-svd"]["error"]
    assert recs["dense"]["status"] == "ok"


def test_interrupted_ray_run_resumes_locally(tmp_path, tiny_suite):
    suite = tiny_suite(methods=["svd"], ratios=[1.5, 2, 3, 4, 6, 8, 12, 16], train={"epochs": 1, "batch_size": 64},
                       finetune={"epochs": 3, "batch_size": 64})
    records = tmp_path / suite.stem / "runs.jsonl"
    cmd = [sys.executable, "run_all.py", "--suite", str(suite), "--out", str(tmp_path), "--backend", "ray",
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(read_records(records)) < 1 and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray instance
    proc.wait()
    before = _keys(records)
    assert 1 <= len(before) < 8, "the interruption must land mid-sweep"
    assert main(["--suite", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    keys = [r["key"] for r in read_records(records) if r["status"] == "ok"]
    assert len(keys) == len(set(keys)) == 8  # nothing finished on Ray ran again
