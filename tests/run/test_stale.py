"""A record made on another dense baseline than the cached checkpoint, or with an lr pick its
tuning job no longer makes, is not done: the sweep runs its job again (bench/stale.py)."""
from __future__ import annotations

import json

from bench.cli import main
from bench.records import read_records
from bench.tuning import pick_changed, picks_started

FORGED = "feedfacefeedface"  # a fingerprint no checkpoint here has: the record came from elsewhere


def _run(suite, out, *more) -> int:
    return main(["--suite", str(suite), "--out", str(out), "--no-progress", *more])


def _forge_baseline(path, method: str, seed: int) -> None:
    """Rewrite the records of (method, seed) as if made on another machine's baseline."""
    lines = []
    for rec in read_records(path):
        if rec["method"] == method and rec["seed"] == seed:
            rec["baseline_fingerprint"] = FORGED
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")


def test_picks_started_and_pick_changed():
    tuner = {"status": "ok", "lr_tuning": {"pick": 0.01, "tuned_here": True,
                                           "val_acc": {"0.01": 80.0, "0.05": 70.0, "0.003": 75.0}}}
    same = {"status": "ok", "lr_tuning": {"pick": 0.01, "tuned_here": False}}
    fell_back = {"status": "ok", "lr_tuning": {"pick": 0.003, "borrowed_pick": 0.01, "tuned_here": False,
                                               "fallbacks": [{"pick": 0.01, "val_acc": 10.0},
                                                             {"pick": 0.003, "val_acc": 70.0}]}}
    other = {"status": "ok", "lr_tuning": {"pick": 0.05, "tuned_here": False}}
    assert picks_started(fell_back["lr_tuning"]) == [0.01, 0.003]
    assert not pick_changed(same, tuner) and not pick_changed(fell_back, tuner)
    assert pick_changed(other, tuner)  # the tuning job now ranks 0.01 first: this run measured something else
    reordered = {**tuner, "lr_tuning": {**tuner["lr_tuning"], "val_acc": {"0.01": 80.0, "0.05": 76.0, "0.003": 75.0}}}
    assert pick_changed(fell_back, reordered)  # its fallback is no longer the runner-up
    assert not pick_changed({"status": "failed"}, tuner) and not pick_changed(same, {"status": "failed"})


def test_records_on_another_baseline_run_again_and_their_reusing_seeds_wait_for_them(tmp_path, tiny_suite, capsys):
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05])
    path = tmp_path / suite.stem / "runs.jsonl"
    assert _run(suite, tmp_path) == 0
    first = read_records(path)
    assert len(first) == 4 and len({r["baseline_fingerprint"] for r in first if r["seed"] == 0}) == 1
    _forge_baseline(path, "svd", 0)  # seed 0's tuning run, made on a baseline we no longer have

    capsys.readouterr()
    assert _run(suite, tmp_path, "--set", "protocol.seeds=[1]") == 0
    err = "".join(capsys.readouterr())
    assert "running them again" in err and "1 waiting for the lr pick" in err  # never seed 1 again with the stale pick
    assert len(read_records(path)) == 4

    assert _run(suite, tmp_path) == 0
    rerun = read_records(path)[4:]
    assert sorted((r["method"], r["seed"]) for r in rerun) == [("svd", 0), ("svd", 1)]  # dense stays done
    seed0 = {r["seed"]: r for r in first if r["method"] == "dense"}[0]
    assert {r["baseline_fingerprint"] for r in rerun if r["seed"] == 0} == {seed0["baseline_fingerprint"]}
    rerun_by_seed = {r["seed"]: r for r in rerun}
    assert rerun_by_seed[1]["lr_tuning"]["pick"] == rerun_by_seed[0]["lr_tuning"]["pick"]

    capsys.readouterr()
    assert _run(suite, tmp_path) == 0 and len(read_records(path)) == 6  # now all done
    assert "running them again" not in "".join(capsys.readouterr())


def test_without_a_cached_checkpoint_records_count_as_they_are(tmp_path, tiny_suite):
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    path = tmp_path / suite.stem / "runs.jsonl"
    assert _run(suite, tmp_path) == 0
    _forge_baseline(path, "svd", 0)
    for f in (tmp_path / "checkpoints").glob("*.json"):
        f.unlink()  # nothing to compare with (records copied without their checkpoints)
    for f in (tmp_path / "checkpoints").glob("*.pt"):
        f.unlink()
    assert _run(suite, tmp_path, "--report-only") == 0
    assert _run(suite, tmp_path) == 0 and len(read_records(path)) == 2


def test_records_found_stale_once_the_sweep_trains_their_baseline_run_in_the_same_sweep(tmp_path, tiny_suite, capsys):
    """Records copied without their checkpoints count as they are until a sweep trains the
    baseline; when it does, and the weights differ, the same sweep runs their jobs again, so one
    command leaves each seed on one baseline. The dry run and the sweep say so before anything
    runs: every record on a baseline the sweep will train is at risk."""
    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    path = tmp_path / suite.stem / "runs.jsonl"
    assert _run(suite, tmp_path) == 0
    _forge_baseline(path, "svd", 0)  # made on another machine's baseline, whose checkpoint is not here
    for f in list((tmp_path / "checkpoints").glob("*.json")) + list((tmp_path / "checkpoints").glob("*.pt")):
        f.unlink()
    suite.write_text(tiny_suite(methods=["dense", "svd"], ratios=[2, 8], seeds=[0]).read_text())  # one job more
    capsys.readouterr()
    risk = "note: 2 recorded jobs sit on dense baselines that are not in the checkpoint cache, which this sweep trains"
    assert _run(suite, tmp_path, "--dry-run") == 0 and risk in capsys.readouterr().out  # said before it runs
    assert _run(suite, tmp_path) == 0
    captured = capsys.readouterr()
    assert risk in captured.err
    assert "1 records were made on another dense baseline than the one this sweep trained" in captured.err
    assert "2 ok" in captured.out and "1 already done" in captured.out  # svd at 8x, then svd at 2x again
    recs = read_records(path)
    assert [(r["method"], r["target_ratio"]) for r in recs[2:]] == [("svd", 8.0), ("svd", 2.0)]
    assert {r["baseline_fingerprint"] for r in recs[2:]} == {recs[0]["baseline_fingerprint"]}
    capsys.readouterr()
    assert _run(suite, tmp_path) == 0 and len(read_records(path)) == 4  # nothing left
    assert "sit on dense baselines" not in capsys.readouterr().err  # the baseline is cached now


def test_tables_leave_out_seeds_whose_borrowed_pick_is_stale():
    import pandas as pd

    from bench.report_frames import baseline_split

    def row(seed, fp, tuning, tune_key="T"):
        return {"network": "n", "dataset": "d", "seed": seed, "status": "ok", "baseline_fingerprint": fp,
                "tune_key": tune_key, "lr_tuning": tuning, "method": "svd", "label": "svd"}
    tuner = {"pick": 0.01, "tuned_here": True, "val_acc": {"0.01": 80.0, "0.05": 70.0}}
    df = pd.DataFrame([
        row(0, "old", {**tuner, "pick": 0.05, "val_acc": {"0.01": 60.0, "0.05": 70.0}}),  # an older baseline's tuning
        row(1, "b1", {"pick": 0.05, "tuned_here": False}),   # borrowed from that one
        row(0, "new", tuner),                                   # seed 0 re-made on the baseline it has now
        row(2, "b2", {"pick": 0.01, "tuned_here": False}),   # borrowed from the current one
        row(1, "b1", {"pick": 0.05, "tuned_here": False}, tune_key="U"),  # another setting's, no tuning row: kept
    ])
    kept, left = baseline_split(df)
    assert sorted(left.index) == [0, 1] and sorted(kept.index) == [2, 3, 4]
    df.at[2, "lr_tuning"] = {**tuner, "pick": 0.05, "val_acc": {"0.01": 60.0, "0.05": 70.0}}
    kept, left = baseline_split(df)  # seed 0 now ranks 0.05 first: seed 2 started from a pick it no longer makes
    assert sorted(left.index) == [0, 3]


def test_reuse_takes_no_record_made_on_another_baseline(tmp_path, tiny_suite, capsys):
    plain = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    assert _run(plain, tmp_path) == 0
    _forge_baseline(tmp_path / plain.stem / "runs.jsonl", "svd", 0)
    twin = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0], reuse=[plain.stem])
    capsys.readouterr()
    assert _run(twin, tmp_path) == 0
    assert "took 1 records of equal jobs" in capsys.readouterr().err  # dense only
    recs = {r["method"]: r for r in read_records(tmp_path / twin.stem / "runs.jsonl")}
    assert recs["dense"]["reused_from"] == plain.stem
    assert "reused_from" not in recs["svd"] and recs["svd"]["baseline_fingerprint"] == recs["dense"]["baseline_fingerprint"]


def test_a_stale_record_two_sweeps_found_is_redone_once(tmp_path, tiny_suite):
    """Both sweeps start with the record stale (in ``redo``); once one has recorded the job
    again, the other's claimer refuses it instead of running it a second time."""
    from bench.claims import Claims
    from bench.records import RecordIndex, append_record
    from bench.runner import JobClaimer
    from bench.suite import expand, load_suite

    suite = tiny_suite(methods=["dense", "svd"], ratios=[2], seeds=[0])
    path = tmp_path / suite.stem / "runs.jsonl"
    assert _run(suite, tmp_path) == 0
    job = next(j for j in expand(load_suite(str(suite))) if j.method == "svd")
    stale = next(r for r in read_records(path) if r["key"] == job.key)
    claims = Claims(tmp_path / "claims")
    first, second = (JobClaimer(claims, RecordIndex(path).refresh(), rerun=False, redo=frozenset({job.key}))
                     for _ in range(2))
    assert first(job)  # the stale record is no reason to skip it
    claims.release(job.key)
    append_record(path, {**stale, "started": "2099-01-01T00:00:00"})  # the first sweep's new record
    assert not second(job) and not first(job)  # recorded meanwhile: neither runs it again
    assert JobClaimer(claims, RecordIndex(path).refresh(), rerun=True, redo=frozenset({job.key}))(job)  # --rerun does
