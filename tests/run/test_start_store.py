"""Compressed starts kept on disk (bench/start_store.py): a job that compresses the same way
loads the start, and what it records is what a fresh compression gives."""
import warnings

import pytest
import torch

from bench.cli import main
from bench.records import read_records
from bench.start_store import StartStore

ADTN = {"method": "adtn", "options": {"prefit_steps": 30, "prefit_polish": 0}}


def _run(*args) -> int:
    return main([*map(str, args), "--no-progress"])


def _suite(tiny_suite, epochs):
    return tiny_suite(networks={"digitnet": ["fc1"]}, methods=[ADTN], ratios=[8], finetune_epochs=epochs)


def test_a_second_epoch_count_loads_the_start_and_records_what_a_fresh_one_gives(tmp_path, tiny_suite):
    suite = _suite(tiny_suite, [0.5, 1])
    assert _run("--suite", suite, "--out", tmp_path / "a") == 0
    by = {r["finetune"]["epochs"]: r for r in read_records(tmp_path / "a" / suite.stem / "runs.jsonl")}
    made, loaded = by[0.5], by[1]
    assert "start_from_cache" not in made and loaded["start_from_cache"]["seconds_to_load"] >= 0
    assert loaded["time_compress_s"] == made["time_compress_s"]
    assert loaded["time_total_s"] >= loaded["time_compress_s"] + loaded["time_finetune_s"]
    assert len(list((tmp_path / "a" / "checkpoints" / "starts").glob("*.pt"))) == 1
    alone = _suite(tiny_suite, [1])  # the same 1-epoch job, compressed afresh
    assert _run("--suite", alone, "--out", tmp_path / "b") == 0
    fresh = read_records(tmp_path / "b" / alone.stem / "runs.jsonl")[0]
    assert fresh["key"] == loaded["key"] and "start_from_cache" not in fresh
    for field in ("fit_rel_error", "acc_before_finetune", "acc_after_finetune"):
        assert fresh[field] == loaded[field], field
    untimed = [{k: v for k, v in r["layer_info"]["fc1"].items() if k != "prefit_seconds"} for r in (fresh, loaded)]
    assert untimed[0] == untimed[1] and loaded["layer_info"]["fc1"]["prefit_seconds"] == made["layer_info"]["fc1"]["prefit_seconds"]


def test_an_unreadable_start_is_compressed_again(tmp_path, tiny_suite):
    suite = _suite(tiny_suite, [0.5])
    assert _run("--suite", suite, "--out", tmp_path) == 0
    (start,) = (tmp_path / "checkpoints" / "starts").glob("*.pt")
    start.write_bytes(start.read_bytes()[:100])  # torn
    with pytest.warns(UserWarning, match="does not load"):
        assert _run("--suite", suite, "--out", tmp_path, "--rerun") == 0
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert "start_from_cache" not in recs[-1] and recs[-1]["acc_after_finetune"] == recs[0]["acc_after_finetune"]
    assert start.stat().st_size > 100  # kept again, whole
    torch.save({"state": torch.nn.Linear(2, 2)}, start)  # a pickled object, not weights: never unpickled
    with pytest.warns(UserWarning, match="does not load.*Weights only load failed"):
        assert _run("--suite", suite, "--out", tmp_path, "--rerun") == 0
    assert "start_from_cache" not in read_records(tmp_path / suite.stem / "runs.jsonl")[-1]


def test_the_key_holds_what_the_start_depends_on(tmp_path):
    from bench.jobs import expand
    from bench.registry import get_method
    from bench.suite import load_suite

    job = next(j for j in expand(load_suite("smoke")) if not j.reference)
    method = get_method(job.method, **job.options)
    store, knobs = StartStore(tmp_path), {n: 1 for n in job.layers}
    key = store.key(job, method, knobs, "fp", "cpu")
    assert store.key(job, method, knobs, None, "cpu") is None  # no baseline to tie it to
    assert store.key(job, method, knobs, "other", "cpu") != key
    assert store.key(job, method, {n: 2 for n in job.layers}, "fp", "cpu") != key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert store.key(job, method, knobs, "fp", "cpu") != key
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load(key, None, method, knobs) is None  # nothing kept: no warning


def test_the_dry_run_costs_a_loaded_start_no_factorisation(tiny_suite):
    """The 1-epoch job loads the start the 0.5-epoch job keeps: no factorisation in its estimate."""
    from bench.planning import planned_loaded_starts
    from bench.jobs import expand
    from bench.suite import load_suite

    jobs = expand(load_suite(str(_suite(tiny_suite, [0.5, 1]))))
    assert [j.finetune["epochs"] for j in jobs] == [0.5, 1]
    assert planned_loaded_starts(jobs, {}) == {jobs[1].key}
    svd = expand(load_suite(str(tiny_suite(networks={"digitnet": ["fc1"]}, methods=["svd"], ratios=[8],
                                           finetune_epochs=[0.5, 1]))))
    assert planned_loaded_starts(svd, {}) == set()  # svd keeps no start
