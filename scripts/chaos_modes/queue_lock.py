"""queue-lock (deterministic): ``--devices cpu,cpu`` with the plugin's ``lockkill-svd``, which makes
one worker take its result queue's write lock (as its feeder thread does while it writes a record to
the pipe) and SIGKILL itself right then, so the other worker's records can never be sent. The run
must end (within 60 s); a final resume must exit 0."""
from __future__ import annotations

from ._harness import Chaos, analyse, finish, new_result
from ._procs import Run

ROWS = {"queue-lock": "(b') `--devices cpu,cpu`, a worker SIGKILLed while it holds the result queue's write lock"}
LOCK_TIMEOUT_S = 60


def run(chaos: Chaos) -> dict:
    res = new_result()
    d = chaos.trial_dir("queue-lock", 0)
    suite = chaos.write_suite(d / "chaos.yaml", methods=["lockkill-svd"], ratios=[2, 4, 8])
    keys = chaos.job_keys(suite)
    out = d / "out"
    args = chaos.args(out, devices="cpu,cpu", suite=suite)
    sweep = Run(args, d / "run0.log")
    rc = sweep.wait(timeout=LOCK_TIMEOUT_S)
    res["kills"] += 1
    res["codes"]["worker-killed run"][rc] += 1
    if rc is None:
        res["hangs"] += 1
        res["unexpected"].append(f"run with a worker killed holding the queue lock hung (no exit after "
                                 f"{LOCK_TIMEOUT_S} s; killed): {sweep.log}")
    finish(Run(args, d / "final.log"), res, "final resume", expect=0)
    a = analyse(out / suite.stem / "runs.jsonl", keys)
    res["final"].append(a)
    res["trials"] += 1
    print(f"  queue-lock: rc {rc}, {a}", flush=True)
    return {"queue-lock": res}
