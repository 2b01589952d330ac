#!/usr/bin/env python3
"""Chaos test: kill tnbench sweeps at random moments and check what the records look like after
a resume.

    python scripts/chaos.py [--trials N] [--modes MODE,...] [--out DIR] [--seed S]

Modes (all by default; each trial starts from an empty output folder and runs a tiny suite on the
embedded ``digits`` with a plugin method that sleeps in ``factorize``, so kills land mid-sweep; one
module each in scripts/chaos_modes/):

  local           one process; SIGKILL at a random moment, a torn line appended (as a kill inside
                  a write would leave), a resume killed again at a random moment, a final resume
  devices         ``--devices cpu,cpu``; one *worker* process (a child of the driver) SIGKILLed at
                  a random moment; the driver must notice, record its jobs failed and exit 1; resume
  concurrent      two sweeps on one ``--out``; one of them SIGKILLed at a random moment, the other
                  runs to its end; resume
  ray             ``--backend ray`` on a local Ray instance (half of --trials each, two rows):
                  ray-worker, a Ray worker process running a job task SIGKILLed (Ray retries it);
                  ray-driver, the driver SIGKILLed mid-sweep, then resumed with the local backend
  checkpoints     the dense baseline's checkpoint damaged (truncated/empty/flipped-byte .pt,
                  truncated/missing .json), then a ``--rerun`` sweep (a table of its own)
  queue-lock      ``--devices cpu,cpu``; one worker SIGKILLs itself while holding its result
                  queue's write lock (deterministic); the run must end within 60 s; final resume
  devices-driver  ``--devices cpu,cpu``; the driver alone SIGKILLed, its workers outlive it; a
                  resume started at once must leave no job undone (half of --trials)
  empty-claim     a claim file left empty (a kill between its O_EXCL create and its write); the
                  resume must still run that job (deterministic)

Per mode it counts: kills tried (delivered to a live process), corrupt (unparsable) lines left
in runs.jsonl, duplicate ok keys, lost jobs (no ok/skipped record after the final resume),
needless re-runs (ok records beyond one per key) and the exit codes seen per phase. Every
process runs with OMP_NUM_THREADS=1. Prints the markdown table and writes it to DIR/chaos.md
(raw per-trial results: DIR/chaos.json; logs of every run under DIR/work/). Exits 1 if any mode
left a corrupt line, a duplicate, a lost job, a needless re-run, a hang or an unexpected exit code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos_modes import MODES, SLEEP_S, TITLES, Chaos  # noqa: E402

BAD = ("corrupt", "dup_ok_keys", "lost", "needless")


def _codes(codes: dict) -> str:
    parts = []
    for phase, c in codes.items():
        shown = ", ".join(f"{'hang' if k is None else k} ×{v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))
        parts.append(f"{phase}: {shown}")
    return "; ".join(parts)


def table(results: dict, ckpt_rows: list[dict] | None, jobs: int) -> str:
    lines = [f"Suite: {jobs} jobs (digits, digitnet conv2+fc1, slow-svd at 6 budgets × 2 seeds, "
             f"factorize sleeps {SLEEP_S} s).", "",
             "| mode | trials | kills tried | corrupt lines | duplicate ok keys | lost jobs | needless re-runs "
             "| hangs | exit codes seen | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        s = {k: sum(x[k] for x in r["final"]) for k in BAD}
        good = not any(s.values()) and not r["hangs"] and not r["unexpected"]
        lines.append(f"| {TITLES[mode]} | {r['trials']} | {r['kills']} | {s['corrupt']} | {s['dup_ok_keys']} "
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
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: %(default)s (the default: all)")
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
            ckpt = MODES[m].run(chaos)
        else:
            results.update(MODES[m].run(chaos))
    md = table(results, ckpt, len(chaos.keys))
    cmd = "python scripts/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = f"Command: `{cmd.strip()}` ({time.time() - t0:.0f} s)\n\n" + md
    (out / "chaos.md").write_text(md)
    (out / "chaos.json").write_text(json.dumps({"results": results, "checkpoints": ckpt,
                                                "calibration_s": chaos.durations}, indent=1, default=str))
    print(md)
    bad = any(r["unexpected"] or r["hangs"] or any(f[k] for f in r["final"] for k in BAD) for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
