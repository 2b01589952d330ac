"""checkpoints: the dense baseline's checkpoint damaged (truncated/empty/flipped-byte .pt,
truncated/missing .json), then a ``--rerun`` sweep each time; a table of its own, one row a case."""
from __future__ import annotations

import json

from ._harness import Chaos, analyse
from ._procs import Run

ROWS: dict[str, str] = {}  # rows of their own table (chaos.py ``table``), not of the kill table


def _flip(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]


def run(chaos: Chaos) -> list[dict]:
    from bench.baseline import file_sha256

    d = chaos.work / "checkpoints"
    d.mkdir()
    small = chaos.write_suite(d / "ckpt.yaml", ratios=[2, 8], protocol={"seeds": [0]})
    out = d / "out"
    rc = Run(chaos.args(out, suite=small), d / "setup.log").wait()
    assert rc == 0, f"setup sweep exited {rc}: see {d / 'setup.log'}"
    (pt,) = (out / "checkpoints").glob("*.pt")
    js = pt.with_suffix(".json")
    good_pt, good_js = pt.read_bytes(), js.read_bytes()
    cases = [
        ("truncated .pt", lambda: pt.write_bytes(good_pt[: len(good_pt) // 2])),
        ("empty .pt", lambda: pt.write_bytes(b"")),
        ("flipped byte in .pt", lambda: pt.write_bytes(_flip(good_pt))),
        ("truncated .json", lambda: js.write_bytes(good_js[: len(good_js) // 2])),
        ("missing .json (weights without summary)", lambda: js.unlink()),
    ]
    rows = []
    for i, (name, damage) in enumerate(cases):
        pt.write_bytes(good_pt)
        js.write_bytes(good_js)
        damage()
        records = out / small.stem / "runs.jsonl"
        before = analyse(records, set())["records"]
        run_ = Run(chaos.args(out, "--rerun", suite=small), d / f"case{i}.log")
        rc = run_.wait()
        log = run_.log.read_text(errors="replace")
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
