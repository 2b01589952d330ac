"""devices: ``--devices cpu,cpu``; one *worker* process (a child of the driver) SIGKILLed at a
random moment; the driver must notice, record its jobs failed and exit 1 (0 if the worker had no
job left); then a resume."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ._harness import Chaos, analyse, count_in_log, finish, new_result
from ._procs import RUN_TIMEOUT_S, Run, sleep_while, spawn_workers

ROWS = {"devices": "(b) `--devices cpu,cpu`, one worker SIGKILLed"}


def run(chaos: Chaos) -> dict:
    T = chaos.calibrate("devices", devices="cpu,cpu")
    res = new_result()
    for i, d, out in chaos.trial_dirs("devices"):
        sweep = Run(chaos.args(out, devices="cpu,cpu"), d / "run0.log")
        workers = []
        while sweep.alive() and not workers and time.time() - sweep.t0 < RUN_TIMEOUT_S:
            workers = spawn_workers(sweep.pid)
            time.sleep(0.05)
        t_workers = time.time() - sweep.t0
        at = chaos.rng.uniform(0.0, max(0.5, 0.9 * T - t_workers))
        sleep_while(sweep, at)
        alive = [w for w in spawn_workers(sweep.pid) if Path(f"/proc/{w}").exists()]
        if alive and sweep.alive():
            os.kill(chaos.rng.choice(alive), signal.SIGKILL)
            res["kills"] += 1
            res["kill_at_s"].append(round(t_workers + at, 2))
            rc = sweep.wait()
            a = analyse(chaos.records(out), chaos.keys)
            expect = 1 if a["failed"] else 0
            res["codes"]["worker-killed run"][rc] += 1
            res["details"].append({"trial": i, "rc": rc, "failed_records": a["failed"],
                                   "died_messages": count_in_log(sweep.log, "died (exit code"),
                                   "expected_rc": expect})
            if rc is None:
                res["hangs"] += 1
            elif rc != expect:
                res["unexpected"].append(f"trial {i}: worker-killed run exited {rc}, "
                                         f"{a['failed']} failed records (expected {expect})")
        else:
            finish(sweep, res, "run (kill came too late)")
        chaos.final(run_dir=d, out=out, res=res, devices="cpu,cpu")
    return {"devices": res}
