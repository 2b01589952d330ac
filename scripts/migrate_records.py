#!/usr/bin/env python3
"""Give records written before records carried their whole config (2026-12-02) the config
fields they lack, so that resume trusts them again:

    python scripts/migrate_records.py [--write] [RUNS.jsonl ...]   (default: every results/**/*runs.jsonl)

A record is trusted only if its key is the hash of the config its own fields state
(``bench.records.key_matches``). Older records lack ``knob``, ``optimizer_grid``, ``lr_extend``
or ``bias_calibration_rule``, so their jobs would run again. For each such record this takes the
missing fields from the suite job with the record's key (the suite is the records file's folder
name), or ``knob`` from the record's ``knobs`` when every layer has the same one, and keeps the
filled record only if it then hashes to its own key: nothing is trusted that does not verify.
Lines that need nothing stay byte for byte. Without ``--write`` it only counts.
"""
from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.records import key_matches  # noqa: E402
from bench.suite import SuiteError, expand, load_suite  # noqa: E402

FILLABLE = ("knob", "optimizer_grid", "lr_extend", "bias_calibration_rule", "lr_grid", "tune_epochs")


def _suite_jobs(name: str) -> dict:
    try:
        suite = load_suite(name)
    except (SuiteError, FileNotFoundError, KeyError, ValueError):
        return {}
    return {j.key: j for fit_only in (False, True) for j in expand(suite, fit_only=fit_only)}


def _candidates(rec: dict, jobs: dict):
    job = jobs.get(rec.get("key"))
    if job is not None:
        cfg = job.config()
        yield {k: cfg[k] for k in FILLABLE if k in cfg}
    values = list((rec.get("knobs") or {}).values())
    if values and all(v == values[0] for v in values):
        yield {"knob": values[0]}


def migrate(path: str, write: bool) -> tuple[int, int, int]:
    """(lines, fixed, still unverified) of one records file."""
    jobs = _suite_jobs(Path(path).parent.name)
    lines = Path(path).read_text().splitlines()
    out, fixed, left = [], 0, 0
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(rec, dict) and "key" in rec and not key_matches(rec):
            for extra in _candidates(rec, jobs):
                filled = {**rec, **{k: v for k, v in extra.items() if k not in rec}}
                if key_matches(filled):
                    line, fixed = json.dumps(filled, sort_keys=True), fixed + 1
                    break
            else:
                left += 1
        out.append(line)
    if write and fixed:
        Path(path).write_text("\n".join(out) + "\n")
    return len(lines), fixed, left


def main(argv: list[str]) -> int:
    write = "--write" in argv
    paths = [a for a in argv if a != "--write"] or sorted(glob.glob("results/**/*runs.jsonl", recursive=True))
    for path in paths:
        n, fixed, left = migrate(path, write)
        print(f"{path}: {n} lines, {fixed} {'fixed' if write else 'fixable'}, {left} unverified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
