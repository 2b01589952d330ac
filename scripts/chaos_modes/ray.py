"""ray: ``--backend ray`` on a local Ray instance, two kinds of trial (half of ``--trials`` each):
ray-worker, a Ray worker process running a job task SIGKILLed (Ray retries it, the run ends 0);
ray-driver, the driver SIGKILLed mid-sweep, then the sweep resumed with the local backend."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ._harness import Chaos, analyse, finish, new_result, records_count
from ._procs import RUN_TIMEOUT_S, Run, cmdline

ROWS = {"ray-worker": "(d) Ray local instance, a worker SIGKILLed mid-task (Ray retries it)",
        "ray-driver": "(d) Ray local instance, the driver SIGKILLed mid-sweep, resumed with the local backend"}


def run(chaos: Chaos) -> dict:
    return {"ray-worker": ray_worker(chaos), "ray-driver": ray_driver(chaos)}


def _start(chaos: Chaos, d: Path, out: Path) -> Run:
    return Run(chaos.args(out, "--backend", "ray", devices=""), d / "run0.log")


def ray_worker(chaos: Chaos) -> dict:
    res = new_result()
    for i, d, out in chaos.trial_dirs("ray-worker", half=True):  # a Ray worker killed mid-task: retried, ends 0
        sweep = _start(chaos, d, out)
        victim = None
        deadline = time.time() + RUN_TIMEOUT_S
        want = chaos.rng.randint(1, 6)  # the how-many-th job task seen running to kill
        seen: list[int] = []
        while sweep.alive() and victim is None and time.time() < deadline:
            for pid in sweep.session():
                if cmdline(pid).startswith("ray::_job_task") and pid not in seen:
                    seen.append(pid)
            if len(set(seen)) >= want or (seen and records_count(chaos.records(out)) >= 8):
                time.sleep(chaos.rng.uniform(0.0, 0.4))
                pid = seen[-1]
                if cmdline(pid).startswith("ray::_job_task"):
                    os.kill(pid, signal.SIGKILL)
                    victim = pid
                else:
                    seen.remove(pid)
            time.sleep(0.02)
        if victim is not None:
            res["kills"] += 1
            res["kill_at_s"].append(round(time.time() - sweep.t0, 2))
        rc = sweep.wait()
        res["codes"]["ray run, worker killed" if victim else "ray run (no kill)"][rc] += 1
        if rc is None:
            res["hangs"] += 1
        elif rc != 0:
            res["unexpected"].append(f"ray-worker trial {i}: run exited {rc}")
        res["details"].append({"trial": f"worker-{i}", "rc": rc, **analyse(chaos.records(out), chaos.keys)})
        chaos.final(run_dir=d, out=out, res=res)
    return res


def ray_driver(chaos: Chaos) -> dict:
    res = new_result()
    for i, d, out in chaos.trial_dirs("ray-driver", half=True):  # the driver killed, resumed with the local backend
        sweep = _start(chaos, d, out)
        want = chaos.rng.randint(1, len(chaos.keys) - 2)
        deadline = time.time() + RUN_TIMEOUT_S
        while sweep.alive() and time.time() < deadline and records_count(chaos.records(out)) < want:
            sweep.session()
            time.sleep(0.05)
        time.sleep(chaos.rng.uniform(0.0, 0.5))
        if sweep.kill():
            res["kills"] += 1
            res["kill_at_s"].append(round(time.time() - sweep.t0, 2))
            res["records_at_kill"].append(records_count(chaos.records(out)))
            res["codes"]["ray driver killed"][sweep.proc.returncode] += 1
            time.sleep(1.0)
            left = [p for p in sweep.session() if p != sweep.pid]
            res["details"].append({"trial": f"driver-{i}", "ray_processes_left_after_kill": len(left)})
            sweep.cleanup()  # the local Ray instance it started, if it outlived its driver
        else:
            finish(sweep, res, "ray run (kill came too late)")
        chaos.final(run_dir=d, out=out, res=res)
    return res
