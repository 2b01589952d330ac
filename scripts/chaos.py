#!/usr/bin/env python3
"""Chaos test: kill tnbench sweeps at random moments and check what the records look like after
a resume.

    python scripts/chaos.py [--trials N] [--modes local,devices,concurrent,ray,checkpoints]
                            [--out DIR] [--seed S]

Modes (each trial starts from an empty output folder; a tiny suite on the embedded ``digits``
with a plugin method that sleeps in ``factorize``, so kills land mid-sweep):

  local        one process; SIGKILL at a random moment, a torn line appended (as a kill inside
               a write would leave), a resume killed again at a random moment, a final resume
  devices      ``--devices cpu,cpu``; one *worker* process (a child of the driver) SIGKILLed at
               a random moment; the driver must notice, record its jobs failed and exit 1; resume
  concurrent   two sweeps on one ``--out``; one of them SIGKILLed at a random moment, the other
               runs to its end; resume
  ray          ``--backend ray`` on a local Ray instance: (worker) a Ray worker process running a
               job task SIGKILLed (Ray retries it); (driver) the driver SIGKILLed mid-sweep, then
               the sweep resumed with the local backend
  checkpoints  the dense baseline's checkpoint damaged (truncated/empty/flipped-byte .pt,
               truncated/missing .json), then a ``--rerun`` sweep

Per mode it counts: kills tried (delivered to a live process), corrupt (unparsable) lines left
in runs.jsonl, duplicate ok keys, lost jobs (no ok/skipped record after the final resume),
needless re-runs (ok records beyond one per key) and the exit codes seen per phase. Every
process runs with OMP_NUM_THREADS=1. Prints the markdown table and writes it to DIR/chaos.md
(raw per-trial results: DIR/chaos.json; logs of every run under DIR/work/).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

SLEEP_S = 0.3
PLUGIN = textwrap.dedent(f'''
    import time
    from bench.registry import register_method
    from methods.svd import TruncatedSVD

    @register_method("slow-svd")
    class SlowSVD(TruncatedSVD):
        def factorize(self, layer, rank):
            time.sleep({SLEEP_S})
            return super().factorize(layer, rank)
''')

# tests/conftest.py TINY, with the slow method: 6 budgets x 2 seeds = 12 jobs, 2 baselines (two
# groups, so --devices cpu,cpu gives each worker one)
SUITE = {
    "description": "chaos suite",
    "datasets": ["digits"],
    "networks": {"digitnet": ["conv2", "fc1"]},
    "methods": ["slow-svd"],
    "ratios": [2, 3, 4, 6, 8, 12],
    "seeds": [0, 1],
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "finetune": {"epochs": 0.5, "batch_size": 64, "lr": 0.01},
}
LOCK_PLUGIN = textwrap.dedent('''
    import gc, multiprocessing, multiprocessing.queues, os, signal, time
    from bench.registry import register_method
    from methods.svd import TruncatedSVD

    @register_method("lockkill-svd")
    class LockKill(TruncatedSVD):
        def factorize(self, layer, rank):
            time.sleep(0.3)
            if multiprocessing.current_process().name != "MainProcess":
                try:
                    os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL))  # one worker, once
                except FileExistsError:
                    return super().factorize(layer, rank)
                for q in [o for o in gc.get_objects() if isinstance(o, multiprocessing.queues.Queue)]:
                    q._wlock.acquire()  # what the feeder thread holds while it writes a record
                os.kill(os.getpid(), signal.SIGKILL)  # ... and the kill lands right then
            return super().factorize(layer, rank)
''')
LOCK_TIMEOUT_S = 60
RUN_TIMEOUT_S = 300  # a run still going after this is a hang
TORN = b'{"key": "torn", "status": "o'


# -- processes --------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RAY_ADDRESS")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


class Run:
    """One ``run_all.py`` process, in a session of its own, logging to ``log``."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.fh = open(log, "wb")
        self.t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, "run_all.py", *args], cwd=REPO, stdout=self.fh,
                                     stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        self.pid = self.proc.pid
        self.seen: set[int] = set()  # pids met in its session (cleanup)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int | None:
        """Exit code; None if it hung past ``timeout`` (then it is killed)."""
        try:
            rc = self.proc.wait(timeout=max(1.0, timeout - (time.time() - self.t0)))
        except subprocess.TimeoutExpired:
            rc = None
        self.cleanup()
        return rc

    def kill(self) -> bool:
        """SIGKILL the driver; True if it was alive."""
        if not self.alive():
            return False
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        return True

    def session(self) -> list[int]:
        """Live processes of this run's session (the driver's and all it started that stayed)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    sid = int(stat[stat.rindex(")") + 2:].split()[3])
                except (OSError, ValueError, IndexError):
                    continue
                if sid == self.pid:
                    out.append(int(d.name))
        self.seen.update(out)
        return out

    def cleanup(self) -> None:
        """Kill whatever of this run is still around (by pid: only processes of its session)."""
        self.session()
        for pid in sorted(self.seen):
            if pid != os.getpid() and _sid(pid) == self.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.fh.close()


def _sid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    kids = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(x) for x in f.read_text().split()]
        except OSError:
            pass
    return kids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def spawn_workers(pid: int) -> list[int]:
    """The driver's multiprocessing workers (not its resource tracker or git)."""
    return [k for k in children(pid) if "spawn_main" in cmdline(k)]


# -- records ------------------------------------------------------------------------------------

def analyse(path: Path, keys: set[str]) -> dict:
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
    ok = Counter(r["key"] for r in recs if r.get("status") == "ok")
    done = {r["key"] for r in recs if r.get("status") in ("ok", "skipped")}
    return {"corrupt": corrupt, "records": len(recs), "dup_ok_keys": sum(c > 1 for c in ok.values()),
            "needless": sum(c - 1 for c in ok.values()), "lost": len(keys - done),
            "failed": sum(r.get("status") == "failed" for r in recs),
            "foreign": len({r["key"] for r in recs} - keys)}


def _done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    out = set()
    for line in path.read_bytes().split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("status") in ("ok", "skipped"):
            out.add(rec.get("key"))
    return out


def records_count(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n") if line.endswith(b"}"))


# -- the harness ----------------------------------------------------------------------------------

class Chaos:
    def __init__(self, out: Path, trials: int, seed: int):
        self.out, self.trials, self.rng = out, trials, random.Random(seed)
        self.work = out / "work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.plugin = self.work / "slow_plugin.py"
        self.plugin.write_text(PLUGIN)
        self.suite = self.work / "chaos.yaml"
        self.suite.write_text(yaml.safe_dump(SUITE))
        self.keys = self._job_keys(self.suite)
        self.durations: dict[str, float] = {}
        self.results: dict[str, dict] = {}

    def _job_keys(self, suite: Path) -> set[str]:
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

    # -- (a) local ----------------------------------------------------------------------------

    def mode_local(self) -> dict:
        T = self.calibrate("local")
        res = new_result()
        for i in range(self.trials):
            d = self.trial_dir("local", i)
            out = d / "out"
            for k in range(2):  # the sweep, then a resume, each killed at a random moment
                run = Run(self.args(out), d / f"run{k}.log")
                left = len(self.keys) - len(_done(self.records(out)))  # a resume runs what is left
                at = self.rng.uniform(1.0, 0.95 * (4.0 + (T - 4.0) * left / len(self.keys)))
                _sleep_while(run, at)
                if run.kill():
                    res["kills"] += 1
                    res["kill_at_s"].append(round(at, 2))
                    res["codes"]["killed run"][run.proc.returncode] += 1
                    res["records_at_kill"].append(records_count(self.records(out)))
                    if k == 0 and self.records(out).exists():
                        with open(self.records(out), "ab") as f:  # as a kill inside a write would leave
                            f.write(TORN)
                        res["torn_injected"] += 1
                    run.cleanup()
                else:
                    _finish(run, res, "resume (kill came too late)")
            _final(self, run_dir=d, out=out, res=res)
        return res

    # -- (b) --devices cpu,cpu, one worker killed -------------------------------------------------

    def mode_devices(self) -> dict:
        T = self.calibrate("devices", devices="cpu,cpu")
        res = new_result()
        for i in range(self.trials):
            d = self.trial_dir("devices", i)
            out = d / "out"
            run = Run(self.args(out, devices="cpu,cpu"), d / "run0.log")
            workers = []
            while run.alive() and not workers and time.time() - run.t0 < RUN_TIMEOUT_S:
                workers = spawn_workers(run.pid)
                time.sleep(0.05)
            t_workers = time.time() - run.t0
            at = self.rng.uniform(0.0, max(0.5, 0.9 * T - t_workers))
            _sleep_while(run, at)
            alive = [w for w in spawn_workers(run.pid) if Path(f"/proc/{w}").exists()]
            if alive and run.alive():
                victim = self.rng.choice(alive)
                os.kill(victim, signal.SIGKILL)
                res["kills"] += 1
                res["kill_at_s"].append(round(t_workers + at, 2))
                rc = run.wait()
                a = analyse(self.records(out), self.keys)
                died = _count_in_log(run.log, "died (exit code")
                expect = 1 if a["failed"] else 0
                res["codes"]["worker-killed run"][rc] += 1
                res["details"].append({"trial": i, "rc": rc, "failed_records": a["failed"],
                                       "died_messages": died, "expected_rc": expect})
                if rc is None:
                    res["hangs"] += 1
                elif rc != expect:
                    res["unexpected"].append(f"trial {i}: worker-killed run exited {rc}, "
                                             f"{a['failed']} failed records (expected {expect})")
            else:
                _finish(run, res, "run (kill came too late)")
            _final(self, run_dir=d, out=out, res=res, devices="cpu,cpu")
        return res

    # -- (b'') --devices cpu,cpu, the driver killed (its workers live on) -------------------------

    def mode_devices_driver(self) -> dict:
        """The driver alone SIGKILLed (as the OOM killer would); its spawned workers outlive it.
        A resume started right away, while they still run, must still leave no job undone."""
        T = self.calibrate("devices", devices="cpu,cpu")
        res = new_result()
        n = max(1, (self.trials + 1) // 2)
        for i in range(n):
            d = self.trial_dir("devices-driver", i)
            out = d / "out"
            run = Run(self.args(out, devices="cpu,cpu"), d / "run0.log")
            while run.alive() and not spawn_workers(run.pid) and time.time() - run.t0 < RUN_TIMEOUT_S:
                time.sleep(0.05)
            t_workers = time.time() - run.t0
            _sleep_while(run, self.rng.uniform(0.0, max(0.5, 0.8 * T - t_workers)))
            workers = spawn_workers(run.pid)
            if run.kill():
                res["kills"] += 1
                res["codes"]["driver killed"][run.proc.returncode] += 1
                orphans = [w for w in workers if Path(f"/proc/{w}").exists()]
                first = Run(self.args(out, devices="cpu,cpu"), d / "resume1.log")
                _finish(first, res, "resume while orphans live")
                a = analyse(self.records(out), self.keys)
                res["details"].append({"trial": i, "orphan_workers": len(orphans),
                                       "orphans_alive_after_resume": sum(Path(f"/proc/{w}").exists()
                                                                        for w in orphans),
                                       "lost_after_first_resume": a["lost"], "resume": _ran_in_final(first.log)})
                if a["lost"]:
                    res["unexpected"].append(f"trial {i}: the resume run while {len(orphans)} orphan worker(s) "
                                             f"lived exited 0 with {a['lost']} job(s) not done "
                                             f"({_ran_in_final(first.log)})")
            else:
                _finish(run, res, "run (kill came too late)")
            run.cleanup()  # the orphans, if still there
            _final(self, run_dir=d, out=out, res=res, devices="cpu,cpu")
        return res

    # -- a claim file left empty (a kill between its O_EXCL create and its write) -----------------

    def mode_empty_claim(self) -> dict:
        """Deterministic: a sweep killed between creating a claim file and writing it leaves an
        empty claim; the resume then meets it."""
        from bench.claims import Claims  # noqa: F401 - documents where the rule lives

        res = new_result()
        d = self.trial_dir("empty-claim", 0)
        out = d / "out"
        records = self.records(out)
        claims = records.parent / f"{records.stem}.claims"
        claims.mkdir(parents=True)
        victim = sorted(self.keys)[0]
        (claims / victim).write_bytes(b"")
        res["kills"] += 1
        run = Run(self.args(out), d / "resume1.log")
        _finish(run, res, "resume over an empty claim")
        a = analyse(records, self.keys)
        res["details"].append({"lost_after_resume": a["lost"], "resume": _ran_in_final(run.log)})
        if a["lost"]:
            res["unexpected"].append(f"resume exited 0 with {a['lost']} job(s) not done, left to an empty claim "
                                     f"file ({_ran_in_final(run.log)})")
        res["final"].append(a)
        res["trials"] += 1
        print(f"  empty-claim: {a} {_ran_in_final(run.log)}", flush=True)
        return res

    # -- (c) two sweeps on one --out, one killed ------------------------------------------------

    def mode_concurrent(self) -> dict:
        T = self.calibrate("local")
        res = new_result()
        for i in range(self.trials):
            d = self.trial_dir("concurrent", i)
            out = d / "out"
            runs = [Run(self.args(out), d / f"sweep{k}.log") for k in range(2)]
            victim = self.rng.randrange(2)
            at = self.rng.uniform(1.0, 0.9 * T)
            _sleep_while(runs[victim], at)
            if runs[victim].kill():
                res["kills"] += 1
                res["kill_at_s"].append(round(at, 2))
                res["codes"]["killed sweep"][runs[victim].proc.returncode] += 1
                runs[victim].cleanup()
            else:
                _finish(runs[victim], res, "sweep (kill came too late)")
            _finish(runs[1 - victim], res, "other sweep")
            res["details"].append({"trial": i, "left_to_other": _count_in_log(runs[1 - victim].log,
                                                                               "left to another sweep")})
            _final(self, run_dir=d, out=out, res=res)
        return res

    # -- (d) Ray ---------------------------------------------------------------------------------

    def mode_ray(self) -> dict:
        return {"ray-worker": self._ray_worker(), "ray-driver": self._ray_driver()}

    def _ray_worker(self) -> dict:
        res = new_result()
        n = max(1, (self.trials + 1) // 2)
        for i in range(n):  # a Ray worker killed mid-task: retried, the run ends 0
            d = self.trial_dir("ray-worker", i)
            out = d / "out"
            run = Run(self.args(out, "--backend", "ray", devices=""), d / "run0.log")
            victim = None
            deadline = time.time() + RUN_TIMEOUT_S
            want = self.rng.randint(1, 6)  # the how-many-th job task seen running to kill
            seen: list[int] = []
            while run.alive() and victim is None and time.time() < deadline:
                for pid in run.session():
                    if cmdline(pid).startswith("ray::_job_task") and pid not in seen:
                        seen.append(pid)
                if len(set(seen)) >= want or (seen and records_count(self.records(out)) >= 8):
                    time.sleep(self.rng.uniform(0.0, 0.4))
                    pid = seen[-1]
                    if cmdline(pid).startswith("ray::_job_task"):
                        os.kill(pid, signal.SIGKILL)
                        victim = pid
                    else:
                        seen.remove(pid)
                time.sleep(0.02)
            if victim is not None:
                res["kills"] += 1
                res["kill_at_s"].append(round(time.time() - run.t0, 2))
            rc = run.wait()
            res["codes"]["ray run, worker killed" if victim else "ray run (no kill)"][rc] += 1
            if rc is None:
                res["hangs"] += 1
            elif rc != 0:
                res["unexpected"].append(f"ray-worker trial {i}: run exited {rc}")
            res["details"].append({"trial": f"worker-{i}", "rc": rc, **analyse(self.records(out), self.keys)})
            _final(self, run_dir=d, out=out, res=res)
        return res

    def _ray_driver(self) -> dict:
        res = new_result()
        n = max(1, (self.trials + 1) // 2)
        for i in range(n):  # the driver killed mid-sweep, resumed with the local backend
            d = self.trial_dir("ray-driver", i)
            out = d / "out"
            run = Run(self.args(out, "--backend", "ray", devices=""), d / "run0.log")
            want = self.rng.randint(1, len(self.keys) - 2)
            deadline = time.time() + RUN_TIMEOUT_S
            while run.alive() and time.time() < deadline and records_count(self.records(out)) < want:
                run.session()
                time.sleep(0.05)
            time.sleep(self.rng.uniform(0.0, 0.5))
            if run.kill():
                res["kills"] += 1
                res["kill_at_s"].append(round(time.time() - run.t0, 2))
                res["records_at_kill"].append(records_count(self.records(out)))
                res["codes"]["ray driver killed"][run.proc.returncode] += 1
                time.sleep(1.0)
                left = [p for p in run.session() if p != run.pid]
                res["details"].append({"trial": f"driver-{i}", "ray_processes_left_after_kill": len(left)})
                run.cleanup()  # the local Ray instance it started, if it outlived its driver
            else:
                _finish(run, res, "ray run (kill came too late)")
            _final(self, run_dir=d, out=out, res=res)
        return res

    # -- (b') a kill while the worker holds the result queue's write lock -------------------------

    def mode_queue_lock(self) -> dict:
        """Deterministic: a plugin makes one worker take its result queue's write lock (as its
        feeder thread does while it writes a record to the pipe) and SIGKILL itself right then.
        The other worker's records can then never be sent."""
        res = new_result()
        d = self.trial_dir("queue-lock", 0)
        plugin = d / "lockkill.py"
        plugin.write_text(LOCK_PLUGIN.format(marker=str(d / "marker")))
        suite = d / "chaos.yaml"
        suite.write_text(yaml.safe_dump({**SUITE, "methods": ["lockkill-svd"], "ratios": [2, 4, 8]}))
        keys = self._job_keys_for(plugin, suite)
        out = d / "out"
        args = ["--plugin", str(plugin), "--suite", str(suite), "--out", str(out), "--no-progress",
                "--devices", "cpu,cpu"]
        run = Run(args, d / "run0.log")
        rc = run.wait(timeout=LOCK_TIMEOUT_S)
        res["kills"] += 1
        res["codes"]["worker-killed run"][rc] += 1
        if rc is None:
            res["hangs"] += 1
            res["unexpected"].append(f"run with a worker killed holding the queue lock hung (no exit after "
                                     f"{LOCK_TIMEOUT_S} s; killed): {run.log}")
        path = out / suite.stem / "runs.jsonl"
        final = Run(args, d / "final.log")
        _finish(final, res, "final resume", expect=0)
        a = analyse(path, keys)
        res["final"].append(a)
        res["trials"] += 1
        print(f"  queue-lock: rc {rc}, {a}", flush=True)
        return res

    def _job_keys_for(self, plugin: Path, suite: Path) -> set[str]:
        from bench.registry import load_plugin
        from bench.suite import expand, load_suite

        load_plugin(str(plugin))
        return {j.key for j in expand(load_suite(str(suite)))}

    # -- checkpoints -------------------------------------------------------------------------------

    def mode_checkpoints(self) -> list[dict]:
        d = self.work / "checkpoints"
        d.mkdir()
        small = d / "ckpt.yaml"
        small.write_text(yaml.safe_dump({**SUITE, "ratios": [2, 8], "seeds": [0]}))
        out = d / "out"
        rc = Run(self.args(out, suite=small), d / "setup.log").wait()
        assert rc == 0, f"setup sweep exited {rc}: see {d / 'setup.log'}"
        (pt,) = (out / "checkpoints").glob("*.pt")
        js = pt.with_suffix(".json")
        good_pt, good_js = pt.read_bytes(), js.read_bytes()

        def flip(b: bytes) -> bytes:
            i = len(b) // 2
            return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]

        cases = [
            ("truncated .pt", lambda: pt.write_bytes(good_pt[: len(good_pt) // 2])),
            ("empty .pt", lambda: pt.write_bytes(b"")),
            ("flipped byte in .pt", lambda: pt.write_bytes(flip(good_pt))),
            ("truncated .json", lambda: js.write_bytes(good_js[: len(good_js) // 2])),
            ("missing .json (weights without summary)", lambda: js.unlink()),
        ]
        rows = []
        from bench.baseline import file_sha256

        for i, (name, damage) in enumerate(cases):
            pt.write_bytes(good_pt)
            js.write_bytes(good_js)
            damage()
            records = out / small.stem / "runs.jsonl"
            before = analyse(records, set())["records"]
            run = Run(self.args(out, "--rerun", suite=small), d / f"case{i}.log")
            rc = run.wait()
            log = run.log.read_text(errors="replace")
            warn = [line for line in log.splitlines() if "checkpoint" in line and pt.name in line]
            recs = [json.loads(x) for x in records.read_text().splitlines()][before:]
            meta = json.loads(js.read_text()) if js.exists() else {}
            verifies = pt.exists() and meta.get("weights_sha256") == file_sha256(pt)
            retrained = verifies and meta.get("time_train_s") != json.loads(good_js).get("time_train_s")
            rows.append({"case": name, "rc": rc,
                         "warning": warn[0].strip().replace(str(pt.parent) + "/", "") if warn else "",
                         "warns_naming_file": bool(warn), "retrained_pair_verifies": retrained,
                         "new_records": len(recs), "new_ok": sum(r["status"] == "ok" for r in recs)})
        return rows


# -- helpers -------------------------------------------------------------------------------------

def new_result() -> dict:
    return {"trials": 0, "kills": 0, "kill_at_s": [], "records_at_kill": [], "torn_injected": 0,
            "codes": _Codes(), "hangs": 0, "unexpected": [], "details": [], "final": []}


class _Codes(dict):
    def __missing__(self, phase):
        self[phase] = Counter()
        return self[phase]


def _sleep_while(run: Run, seconds: float) -> None:
    end = time.time() + seconds
    while run.alive() and time.time() < end:
        run.session()
        time.sleep(0.02)


def _finish(run: Run, res: dict, phase: str, expect: int = 0) -> int | None:
    rc = run.wait()
    res["codes"][phase][rc] += 1
    if rc is None:
        res["hangs"] += 1
        res["unexpected"].append(f"{run.log}: hung (killed after {RUN_TIMEOUT_S} s)")
    elif rc != expect:
        res["unexpected"].append(f"{run.log}: {phase} exited {rc}, expected {expect}")
    return rc


def _final(chaos: Chaos, run_dir: Path, out: Path, res: dict, devices: str = "cpu") -> None:
    """The final resume (local backend); it must exit 0 and leave every job done once."""
    run = Run(chaos.args(out, devices=devices), run_dir / "final.log")
    _finish(run, res, "final resume")
    a = analyse(chaos.records(out), chaos.keys)
    a["ran_in_final"] = _ran_in_final(run.log)
    res["final"].append(a)
    res["trials"] += 1
    print(f"  {run_dir.parent.name} {run_dir.name}: {a}", flush=True)


def _ran_in_final(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if " jobs, " in line and "already done" in line:
            return line.split(": ", 1)[-1]
    return ""


def _count_in_log(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def _codes(codes: dict) -> str:
    parts = []
    for phase, c in codes.items():
        shown = ", ".join(f"{'hang' if k is None else k} ×{v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))
        parts.append(f"{phase}: {shown}")
    return "; ".join(parts)


MODE_NAMES = {
    "local": "(a) local, sweep SIGKILLed ×2 per trial, resumed",
    "devices": "(b) `--devices cpu,cpu`, one worker SIGKILLed",
    "concurrent": "(c) two sweeps on one `--out`, one SIGKILLed, resumed",
    "ray-worker": "(d) Ray local instance, a worker SIGKILLed mid-task (Ray retries it)",
    "ray-driver": "(d) Ray local instance, the driver SIGKILLed mid-sweep, resumed with the local backend",
    "devices-driver": "(b'') `--devices cpu,cpu`, the driver SIGKILLed, resumed at once",
    "empty-claim": "claim file left empty (kill between O_EXCL create and write), resumed",
    "queue-lock": "(b') `--devices cpu,cpu`, a worker SIGKILLed while it holds the result queue's write lock",
}
MODES = ["local", "devices", "concurrent", "ray", "checkpoints", "queue-lock", "devices-driver", "empty-claim"]


def table(results: dict, ckpt_rows: list[dict] | None, jobs: int) -> str:
    lines = [f"Suite: {jobs} jobs (digits, digitnet conv2+fc1, slow-svd at 6 budgets × 2 seeds, "
             f"factorize sleeps {SLEEP_S} s).", "",
             "| mode | trials | kills tried | corrupt lines | duplicate ok keys | lost jobs | needless re-runs "
             "| hangs | exit codes seen | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        f = r["final"]
        s = {k: sum(x[k] for x in f) for k in ("corrupt", "dup_ok_keys", "lost", "needless")}
        good = not any(s.values()) and not r["hangs"] and not r["unexpected"]
        lines.append(f"| {MODE_NAMES[mode]} | {r['trials']} | {r['kills']} | {s['corrupt']} | {s['dup_ok_keys']} "
                     f"| {s['lost']} | {s['needless']} | {r['hangs']} | {_codes(r['codes'])} "
                     f"| {'pass' if good else 'FAIL'} |")
    if ckpt_rows:
        lines += ["", "| damaged checkpoint | next `--rerun` exits | warns naming the file | retrained, pair verifies "
                  "| jobs recorded ok | warning |", "|---|---|---|---|---|---|"]
        for c in ckpt_rows:
            w = c["warning"]
            w = w[w.find("dense baseline"):] if "dense baseline" in w else w
            lines.append(f"| {c['case']} | {c['rc']} | {'yes' if c['warns_naming_file'] else 'NO'} "
                         f"| {'yes' if c['retrained_pair_verifies'] else 'NO'} | {c['new_ok']}/{c['new_records']} "
                         f"| `{w.replace('|', '/')}` |")
    notes = [f"- {m}: {u}" for m, r in results.items() for u in r["unexpected"]]
    if notes:
        lines += ["", "Unexpected:", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6, help="kill trials per mode (Ray: half as many of each kind)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", default="/tmp/tnbench-chaos", help="where chaos.md, chaos.json and work/ go")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s) {sorted(unknown)}; valid: {', '.join(MODES)}")
    out = Path(args.out)
    chaos = Chaos(out, args.trials, args.seed)
    results, ckpt = {}, None
    t0 = time.time()
    for m in modes:
        print(f"mode {m} ...", flush=True)
        if m == "checkpoints":
            ckpt = chaos.mode_checkpoints()
        else:
            r = getattr(chaos, f"mode_{m.replace('-', '_')}")()
            results.update(r if m == "ray" else {m: r})
    md = table(results, ckpt, len(chaos.keys))
    cmd = "python scripts/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = f"Command: `{cmd.strip()}` ({time.time() - t0:.0f} s)\n\n" + md
    (out / "chaos.md").write_text(md)
    (out / "chaos.json").write_text(json.dumps({"results": results, "checkpoints": ckpt,
                                                "calibration_s": chaos.durations}, indent=1, default=str))
    print(md)
    bad = any(r["unexpected"] or r["hangs"] or any(f[k] for f in r["final"] for k in
                                                     ("corrupt", "dup_ok_keys", "lost", "needless"))
              for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
