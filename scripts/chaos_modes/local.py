"""local: one process SIGKILLed at a random moment, a torn line appended (as a kill inside a write
would leave), the resume SIGKILLed again at a random moment, a final resume."""
from __future__ import annotations

from ._harness import TORN, Chaos, done_keys, finish, new_result, records_count
from ._procs import Run, sleep_while

ROWS = {"local": "(a) local, sweep SIGKILLed ×2 per trial, resumed"}


def run(chaos: Chaos) -> dict:
    T = chaos.calibrate("local")
    res = new_result()
    for i, d, out in chaos.trial_dirs("local"):
        records = chaos.records(out)
        for k in range(2):  # the sweep, then a resume, each killed at a random moment
            sweep = Run(chaos.args(out), d / f"run{k}.log")
            left = len(chaos.keys) - len(done_keys(records))  # a resume runs what is left
            at = chaos.rng.uniform(1.0, 0.95 * (4.0 + (T - 4.0) * left / len(chaos.keys)))
            sleep_while(sweep, at)
            if sweep.kill():
                res["kills"] += 1
                res["kill_at_s"].append(round(at, 2))
                res["codes"]["killed run"][sweep.proc.returncode] += 1
                res["records_at_kill"].append(records_count(records))
                if k == 0 and records.exists():
                    with open(records, "ab") as f:  # as a kill inside a write would leave
                        f.write(TORN)
                    res["torn_injected"] += 1
                sweep.cleanup()
            else:
                finish(sweep, res, "resume (kill came too late)")
        chaos.final(run_dir=d, out=out, res=res)
    return {"local": res}
