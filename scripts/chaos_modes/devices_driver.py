"""devices-driver: ``--devices cpu,cpu``; the driver alone SIGKILLed (as the OOM killer would), its
spawned workers outlive it. A resume started right away, while they still run, must still leave no
job undone."""
from __future__ import annotations

import time
from pathlib import Path

from ._harness import Chaos, analyse, finish, new_result, ran_in_final
from ._procs import RUN_TIMEOUT_S, Run, sleep_while, spawn_workers

ROWS = {"devices-driver": "(b'') `--devices cpu,cpu`, the driver SIGKILLed, resumed at once"}


def run(chaos: Chaos) -> dict:
    T = chaos.calibrate("devices", devices="cpu,cpu")
    res = new_result()
    for i, d, out in chaos.trial_dirs("devices-driver", half=True):
        sweep = Run(chaos.args(out, devices="cpu,cpu"), d / "run0.log")
        while sweep.alive() and not spawn_workers(sweep.pid) and time.time() - sweep.t0 < RUN_TIMEOUT_S:
            time.sleep(0.05)
        t_workers = time.time() - sweep.t0
        sleep_while(sweep, chaos.rng.uniform(0.0, max(0.5, 0.8 * T - t_workers)))
        workers = spawn_workers(sweep.pid)
        if sweep.kill():
            res["kills"] += 1
            res["codes"]["driver killed"][sweep.proc.returncode] += 1
            orphans = [w for w in workers if Path(f"/proc/{w}").exists()]
            first = Run(chaos.args(out, devices="cpu,cpu"), d / "resume1.log")
            finish(first, res, "resume while orphans live")
            a = analyse(chaos.records(out), chaos.keys)
            res["details"].append({"trial": i, "orphan_workers": len(orphans),
                                   "orphans_alive_after_resume": sum(Path(f"/proc/{w}").exists() for w in orphans),
                                   "lost_after_first_resume": a["lost"], "resume": ran_in_final(first.log)})
            if a["lost"]:
                res["unexpected"].append(f"trial {i}: the resume run while {len(orphans)} orphan worker(s) "
                                         f"lived exited 0 with {a['lost']} job(s) not done "
                                         f"({ran_in_final(first.log)})")
        else:
            finish(sweep, res, "run (kill came too late)")
        sweep.cleanup()  # the orphans, if still there
        chaos.final(run_dir=d, out=out, res=res, devices="cpu,cpu")
    return {"devices-driver": res}
