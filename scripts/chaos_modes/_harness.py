"""What every chaos mode shares: the plugin and suite a trial runs, ``Chaos`` (the work folder,
the command lines, the calibration, the final resume), the record counts and the result dict."""
from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml

from ._procs import RUN_TIMEOUT_S, Run

SLEEP_S = 0.3
# The one plugin every mode runs. ``slow-svd`` sleeps in factorize, so kills land mid-sweep.
# ``lockkill-svd`` (queue-lock): the first worker to reach factorize takes its result queue's write
# lock (what the feeder thread holds while it writes a record to the pipe) and SIGKILLs itself right then.
PLUGIN = '''\
import gc, multiprocessing, multiprocessing.queues, os, signal, time
from bench.registry import register_method
from methods.svd import TruncatedSVD

MARKER = {marker!r}


@register_method("slow-svd")
class SlowSVD(TruncatedSVD):
    def factorize(self, layer, rank):
        time.sleep({sleep})
        return super().factorize(layer, rank)


@register_method("lockkill-svd")
class LockKill(TruncatedSVD):
    def factorize(self, layer, rank):
        time.sleep({sleep})
        if multiprocessing.current_process().name != "MainProcess" and first_here():  # one worker, once
            for q in [o for o in gc.get_objects() if isinstance(o, multiprocessing.queues.Queue)]:
                q._wlock.acquire()  # what the feeder thread holds while it writes a record
            os.kill(os.getpid(), signal.SIGKILL)  # ... and the kill lands right then
        return super().factorize(layer, rank)


def first_here() -> bool:
    try:
        os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False
'''

# tests/conftest.py TINY, with the slow method: 6 budgets x 2 seeds = 12 jobs, 2 baselines (two
# groups, so --devices cpu,cpu gives each worker one)
SUITE = {
    "description": "chaos suite",
    "datasets": ["digits"],
    "networks": {"digitnet": ["conv2", "fc1"]},
    "methods": ["slow-svd"],
    "ratios": [2, 3, 4, 6, 8, 12],
    "protocol": {"seeds": [0, 1]},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "finetune": {"epochs": 0.5, "batch_size": 64, "lr": 0.01},
}
TORN = b'{"key": "torn", "status": "o'


class Chaos:
    """The work folder ``OUT/work`` with the plugin and suite, the kill-moment RNG and the
    calibrated sweep durations."""

    def __init__(self, out: Path, trials: int, seed: int):
        self.out, self.trials, self.rng = out, trials, random.Random(seed)
        self.work = out / "work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.plugin = self.work / "slow_plugin.py"
        self.plugin.write_text(PLUGIN.format(sleep=SLEEP_S, marker=str(self.work / "lockkill.marker")))
        self.suite = self.write_suite(self.work / "chaos.yaml")
        self.keys = self.job_keys(self.suite)
        self.durations: dict[str, float] = {}

    @staticmethod
    def write_suite(path: Path, **changes) -> Path:
        path.write_text(yaml.safe_dump({**SUITE, **changes}))
        return path

    def job_keys(self, suite: Path) -> set[str]:
        from bench.registry import load_plugin
        from bench.suite import expand, load_suite

        load_plugin(str(self.plugin))
        return {j.key for j in expand(load_suite(str(suite)))}

    def args(self, out: Path, *extra: str, devices: str = "cpu", suite: Path | None = None) -> list[str]:
        a = ["--plugin", str(self.plugin), "--suite", str(suite or self.suite), "--out", str(out),
             "--no-progress", *extra]
        return a + (["--devices", devices] if devices else [])

    def records(self, out: Path) -> Path:
        return out / self.suite.stem / "runs.jsonl"

    def trial_dir(self, mode: str, i: int) -> Path:
        d = self.work / mode / f"t{i}"
        d.mkdir(parents=True)
        return d

    def trial_dirs(self, mode: str, half: bool = False) -> Iterator[tuple[int, Path, Path]]:
        """(i, its folder, its ``--out``) for each trial of ``mode``: ``--trials`` of them, or half
        as many (at least one) for a mode with two kinds of trial or a costly one."""
        for i in range(max(1, (self.trials + 1) // 2) if half else self.trials):
            d = self.trial_dir(mode, i)
            yield i, d, d / "out"

    def calibrate(self, name: str, *extra: str, devices: str = "cpu") -> float:
        """Seconds a clean sweep of the suite takes in this setting (kills are drawn within)."""
        if name not in self.durations:
            d = self.work / f"calibrate-{name}"
            d.mkdir()
            run = Run(self.args(d / "out", *extra, devices=devices), d / "run.log")
            rc = run.wait()
            self.durations[name] = time.time() - run.t0
            a = analyse(self.records(d / "out"), self.keys)
            print(f"  calibration {name}: {self.durations[name]:.1f} s, exit {rc}, {a}", flush=True)
        return self.durations[name]

    def final(self, run_dir: Path, out: Path, res: dict, devices: str = "cpu") -> None:
        """The final resume (local backend); it must exit 0 and leave every job done once."""
        run = Run(self.args(out, devices=devices), run_dir / "final.log")
        finish(run, res, "final resume")
        a = analyse(self.records(out), self.keys)
        a["ran_in_final"] = ran_in_final(run.log)
        res["final"].append(a)
        res["trials"] += 1
        print(f"  {run_dir.parent.name} {run_dir.name}: {a}", flush=True)


# -- records ------------------------------------------------------------------------------------

def read_records(path: Path) -> tuple[list[dict], int]:
    """The records of ``path`` (JSON objects with a string key) and how many lines are not one."""
    raw = path.read_bytes() if path.exists() else b""
    corrupt, recs = 0, []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            corrupt += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            recs.append(rec)
        else:
            corrupt += 1
    return recs, corrupt


def analyse(path: Path, keys: set[str]) -> dict:
    recs, corrupt = read_records(path)
    ok = Counter(r["key"] for r in recs if r.get("status") == "ok")
    done = {r["key"] for r in recs if r.get("status") in ("ok", "skipped")}
    return {"corrupt": corrupt, "records": len(recs), "dup_ok_keys": sum(c > 1 for c in ok.values()),
            "needless": sum(c - 1 for c in ok.values()), "lost": len(keys - done),
            "failed": sum(r.get("status") == "failed" for r in recs),
            "foreign": len({r["key"] for r in recs} - keys)}


def done_keys(path: Path) -> set[str]:
    return {r["key"] for r in read_records(path)[0] if r.get("status") in ("ok", "skipped")}


def records_count(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n") if line.endswith(b"}"))


# -- results ------------------------------------------------------------------------------------

def new_result() -> dict:
    return {"trials": 0, "kills": 0, "kill_at_s": [], "records_at_kill": [], "torn_injected": 0,
            "codes": _Codes(), "hangs": 0, "unexpected": [], "details": [], "final": []}


class _Codes(dict):
    def __missing__(self, phase):
        self[phase] = Counter()
        return self[phase]


def finish(run: Run, res: dict, phase: str, expect: int = 0) -> int | None:
    rc = run.wait()
    res["codes"][phase][rc] += 1
    if rc is None:
        res["hangs"] += 1
        res["unexpected"].append(f"{run.log}: hung (killed after {RUN_TIMEOUT_S} s)")
    elif rc != expect:
        res["unexpected"].append(f"{run.log}: {phase} exited {rc}, expected {expect}")
    return rc


def ran_in_final(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if " jobs, " in line and "already done" in line:
            return line.split(": ", 1)[-1]
    return ""


def count_in_log(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0
