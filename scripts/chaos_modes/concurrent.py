"""concurrent: two sweeps on one ``--out``; one of them SIGKILLed at a random moment, the other
runs to its end; then a resume."""
from __future__ import annotations

from ._harness import Chaos, count_in_log, finish, new_result
from ._procs import Run, sleep_while

ROWS = {"concurrent": "(c) two sweeps on one `--out`, one SIGKILLed, resumed"}


def run(chaos: Chaos) -> dict:
    T = chaos.calibrate("local")
    res = new_result()
    for i, d, out in chaos.trial_dirs("concurrent"):
        sweeps = [Run(chaos.args(out), d / f"sweep{k}.log") for k in range(2)]
        victim = chaos.rng.randrange(2)
        killed, other = sweeps[victim], sweeps[1 - victim]
        at = chaos.rng.uniform(1.0, 0.9 * T)
        sleep_while(killed, at)
        if killed.kill():
            res["kills"] += 1
            res["kill_at_s"].append(round(at, 2))
            res["codes"]["killed sweep"][killed.proc.returncode] += 1
            killed.cleanup()
        else:
            finish(killed, res, "sweep (kill came too late)")
        finish(other, res, "other sweep")
        res["details"].append({"trial": i, "left_to_other": count_in_log(other.log, "left to another sweep")})
        chaos.final(run_dir=d, out=out, res=res)
    return {"concurrent": res}
