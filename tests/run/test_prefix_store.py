"""Frozen-prefix caches kept beside the baseline checkpoint (bench/prefix_store.py): a later run
loads the file and gets the results a fresh build gives; a damaged, foreign or unwritable file
never changes a result."""
import json

import pytest
import torch

import bench.prefix_store as store
from bench.cli import main
from bench.records import OutputWriteError, read_records

FT = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "scope": "after_frozen_prefix",
      "cache_views": 2}


def _suite(tiny_suite):
    return tiny_suite(methods=["dense", "svd", "tt"], seeds=[0], ratios=[4], finetune=FT,
                      networks={"fc2": ["fc2"]})


def _run(suite, out, *args):
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress", *args]) == 0
    return {r["method"]: r for r in read_records(out / suite.stem / "runs.jsonl") if r["status"] == "ok"}


def _files(out):
    return sorted((out / "checkpoints").glob("*.prefix-*.pt"))


def test_a_later_run_loads_the_cache_file_and_gets_what_a_fresh_build_gives(tiny_suite, tmp_path):
    suite = _suite(tiny_suite)
    fresh = _run(suite, tmp_path / "fresh")                    # svd builds the cache, tt takes it from memory
    assert fresh["svd"]["prefix_cache_from"] == "built" and fresh["tt"]["prefix_cache_from"] == "memory"
    assert len(_files(tmp_path / "fresh")) == 1

    resumed = tmp_path / "resumed"
    first = _run(suite, resumed, "--methods", "dense,svd")     # builds and writes the file
    assert first["svd"]["prefix_cache_from"] == "built" and len(_files(resumed)) == 1
    later = _run(suite, resumed, "--methods", "tt")            # another run: reads it
    assert later["tt"]["prefix_cache_from"] == "file"
    for field in ("acc_before_finetune", "acc_after_finetune", "acc_val_after_finetune"):
        assert later["tt"][field] == fresh["tt"][field]


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_a_damaged_or_foreign_file_is_warned_about_and_rebuilt(tiny_suite, tmp_path, damage):
    suite = _suite(tiny_suite)
    out = tmp_path / "out"
    _run(suite, out, "--methods", "dense,svd")
    (path,) = _files(out)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "flip":  # a flipped activation: the tensor fingerprint catches it
        payload = torch.load(path, weights_only=True)
        payload["x_val"][0, 0] += 1.0
        torch.save(payload, path)
    else:  # a file made for another cut or view count, renamed into place
        payload = torch.load(path, weights_only=True)
        payload["identity"] = {**payload["identity"], "views": 3}
        torch.save(payload, path)
    with pytest.warns(UserWarning, match="frozen-prefix cache .* deleting it and rebuilding"):
        rec = _run(suite, out, "--methods", "tt")["tt"]
    assert rec["prefix_cache_from"] == "built"
    ident = torch.load(path, weights_only=True)["identity"]
    assert ident["views"] == 2 and json.dumps(ident)   # rewritten whole


def test_a_failed_write_warns_and_the_run_goes_on(tiny_suite, tmp_path, monkeypatch):
    def full_disk(path, *a):
        raise OutputWriteError(f"cannot write {path}: no space left on device (the file is left as it was)")

    monkeypatch.setattr(store, "save", full_disk)
    suite = _suite(tiny_suite)
    with pytest.warns(UserWarning, match="no space left.*stays in memory"):
        recs = _run(suite, tmp_path / "out")
    assert recs["svd"]["prefix_cache_from"] == "built" and recs["tt"]["prefix_cache_from"] == "memory"
    assert _files(tmp_path / "out") == []


def test_the_identity_names_what_the_activations_depend_on(tiny_suite, tmp_path):
    """A cache for seed 1, or another view count, is another file: never the same name."""
    suite = _suite(tiny_suite)
    out = tmp_path / "out"
    _run(suite, out, "--methods", "dense,svd")
    (path,) = _files(out)
    ident = torch.load(path, weights_only=True)["identity"]
    assert {"baseline_sha256", "layer", "views", "seed", "precision", "device", "data_fingerprint"} <= set(ident)
    assert ident["layer"] == "fc2" and ident["views"] == 2 and ident["seed"] == 0
    from bench.suite import expand, load_suite
    job = next(j for j in expand(load_suite(str(suite))) if j.method == "svd")
    assert store.cache_file(out, job.baseline_config, ident) == path
    assert store.cache_file(out, job.baseline_config, {**ident, "seed": 1}) != path
    assert store.cache_file(out, job.baseline_config, {**ident, "views": 4}) != path
