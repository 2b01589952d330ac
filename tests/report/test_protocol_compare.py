"""plots.protocol_compare: a re-run suite's cells beside the same cells of the old suites."""
from __future__ import annotations

import json

from plots.__main__ import main


def _rec(seed, acc, budget="x32", method="tt", epochs=1, status="ok", pick=None):
    r = {"key": f"{method}{budget}{seed}{epochs}{acc}", "network": "lenet5", "dataset": "mnist", "method": method,
         "label": method, "budget": budget, "seed": seed, "status": status, "acc_after_finetune": acc,
         "finetune": {"epochs": epochs}}
    if pick:
        r["lr_tuning"] = {"pick": pick}
    return r


def _write(path, recs):
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_cells_are_matched_by_method_budget_and_epochs_and_show_each_seed(tmp_path):
    _write(tmp_path / "old" / "runs.jsonl", [_rec(0, 94.74), _rec(1, 11.35), _rec(2, 93.30),
                                             _rec(0, 97.0, epochs=3)])          # another epoch count: not this cell
    _write(tmp_path / "new" / "runs.jsonl", [_rec(0, 95.33, pick={"optimizer": "sgd", "lr": 0.03}), _rec(1, 94.1),
                                             _rec(2, 93.9), _rec(0, 40.0, budget="x128")])
    assert main(["compare-protocols", "--results", str(tmp_path), "--new", "new", "--old", "old"]) == 0
    table = (tmp_path / "new" / "before_after.md").read_text()
    row32 = next(line for line in table.splitlines() if "| x32 |" in line)
    assert "94.74 / 11.35 / 93.30" in row32 and "‡ bimodal: 1/3 at chance" in row32
    assert "95.33 / 94.10 / 93.90" in row32 and "94.44 ±" in row32 and row32.endswith("| sgd@0.03 |")
    row128 = next(line for line in table.splitlines() if "| x128 |" in line)
    assert "| — | — |" in row128 and "1/1 ok: 40.00" in row128


def test_records_of_an_older_definition_of_the_suite_stay_out(tmp_path, monkeypatch):
    """A re-run suite's file keeps the records its earlier definition made (before pick_fallbacks,
    another epoch count) under other keys: each seed is shown once, from the suite's current jobs."""
    import bench.suite

    _write(tmp_path / "old" / "runs.jsonl", [_rec(0, 90.0)])
    current = [_rec(0, 95.0), _rec(1, 94.0), _rec(2, 93.0)]
    earlier = [{**_rec(1, 11.35), "key": "made-before-the-fallback-rule"}]
    _write(tmp_path / "new" / "runs.jsonl", earlier + current)
    monkeypatch.setattr(bench.suite, "current_keys",
                        lambda name, **kw: {r["key"] for r in current} if name == "new" else None)
    assert main(["compare-protocols", "--results", str(tmp_path), "--new", "new", "--old", "old"]) == 0
    row = next(line for line in (tmp_path / "new" / "before_after.md").read_text().splitlines() if "| x32 |" in line)
    assert "| 95.00 / 94.00 / 93.00 |" in row and "11.35" not in row
