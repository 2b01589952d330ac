"""baseline.py: a damaged dense checkpoint is reported, deleted and retrained, never trusted;
a clean one is loaded without training; every summary carries a weights fingerprint."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch

import bench.baseline as baseline
from bench.baseline import BaselineInTraining, checkpoint_path, get_baseline, weights_fingerprint
from tests.conftest import dead_pid
from bench.data import load_splits
from bench.environment import cpu_id

CONFIG = {"network": "digitnet", "dataset": "digits", "seed": 0, "train": {"epochs": 1, "batch_size": 64},
          "data": {"val_fraction": 0.1, "train_subset": None}}


@pytest.fixture(scope="module")
def data():
    return load_splits("digits")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, data):
    """A root holding one clean checkpoint, and the summary its training returned."""
    root = tmp_path_factory.mktemp("clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh training warns about nothing
        model, meta = get_baseline(root, CONFIG, data, progress=False)
    assert meta["weights_fingerprint"] == weights_fingerprint(model.state_dict())
    assert meta["env"]["cpu_id"] == cpu_id() and meta["threads"] == torch.get_num_threads()  # where it trained
    return root, meta


@pytest.fixture
def root(tmp_path, clean):
    shutil.copytree(clean[0] / "checkpoints", tmp_path / "checkpoints")
    return tmp_path


@pytest.fixture
def trains(monkeypatch):
    """Counts the trainings get_baseline starts."""
    calls = []
    real = baseline.train

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(baseline, "train", counting)
    return calls


def _pt(root):
    return checkpoint_path(root, CONFIG)


def _truncate_pt(root):
    p = _pt(root)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty_pt(root):
    _pt(root).write_bytes(b"")


def _flip_pt(root):
    p = _pt(root)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _delete_pt(root):
    _pt(root).unlink()


def _truncate_json(root):
    p = _pt(root).with_suffix(".json")
    p.write_bytes(p.read_bytes()[:20])


def _not_a_summary_json(root):
    _pt(root).with_suffix(".json").write_text("[1, 2]")


def _delete_json(root):
    _pt(root).with_suffix(".json").unlink()


def _garbage_pt_with_matching_hash(root):
    """Bytes whose hash the summary vouches for, but that torch.load cannot read."""
    p = _pt(root)
    p.write_bytes(b"not a torch file")
    meta_path = p.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = baseline.file_sha256(p)
    meta_path.write_text(json.dumps(meta))


def _nan_weights_with_matching_hash(root):
    """A loadable state dict of NaN weights whose hash the summary vouches for."""
    p = _pt(root)
    state = torch.load(p, weights_only=True)
    first = next(k for k, t in state.items() if t.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, p)
    meta_path = p.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = baseline.file_sha256(p)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, reason", [
    (_truncate_pt, "sha256"), (_empty_pt, "empty"), (_flip_pt, "sha256"), (_delete_pt, "missing"),
    (_truncate_json, "unreadable summary"), (_not_a_summary_json, "not a baseline summary"),
    (_delete_json, "without a summary"), (_garbage_pt_with_matching_hash, "torch.load failed"),
    (_nan_weights_with_matching_hash, "non-finite weights in"),
])
def test_damaged_checkpoint_warns_and_retrains(root, data, clean, trains, damage, reason):
    damage(root)
    with pytest.warns(UserWarning, match=reason) as caught:
        _, meta = get_baseline(root, CONFIG, data, progress=False)
    assert str(_pt(root)) in str(caught[0].message)
    assert trains == [1]
    assert meta["weights_fingerprint"] == clean[1]["weights_fingerprint"]  # training is seeded
    assert meta["weights_sha256"] == baseline.file_sha256(_pt(root))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, again = get_baseline(root, CONFIG, data, progress=False)  # the rewritten pair verifies
    assert trains == [1] and again == meta


def test_clean_checkpoint_loads_without_training(root, data, clean, trains):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, meta = get_baseline(root, CONFIG, data, progress=False)
    assert trains == []
    assert meta == clean[1]
    assert weights_fingerprint(model.state_dict()) == meta["weights_fingerprint"]


def test_old_checkpoint_without_hash_gets_a_fingerprint(root, data, clean, trains):
    meta_path = _pt(root).with_suffix(".json")
    old = {k: v for k, v in json.loads(meta_path.read_text()).items()
           if k not in ("weights_sha256", "weights_fingerprint")}
    meta_path.write_text(json.dumps(old))
    _, meta = get_baseline(root, CONFIG, data, progress=False)
    assert trains == []
    assert meta["weights_fingerprint"] == clean[1]["weights_fingerprint"]
    assert json.loads(meta_path.read_text())["weights_sha256"] == baseline.file_sha256(_pt(root))


def test_old_checkpoint_without_hash_that_does_not_load_is_retrained(root, data, clean, trains):
    meta_path = _pt(root).with_suffix(".json")
    old = {k: v for k, v in json.loads(meta_path.read_text()).items() if k != "weights_sha256"}
    meta_path.write_text(json.dumps(old))
    _truncate_pt(root)
    with pytest.warns(UserWarning, match="torch.load failed"):
        _, meta = get_baseline(root, CONFIG, data, progress=False)
    assert trains == [1] and meta["weights_fingerprint"] == clean[1]["weights_fingerprint"]


def test_fingerprint_ignores_device_layout_but_not_values():
    sd = {"b": torch.arange(12.0).reshape(1, 2, 2, 3), "a": torch.zeros(2, dtype=torch.bfloat16)}
    fp = weights_fingerprint(sd)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert weights_fingerprint({"a": sd["a"], "b": sd["b"].to(memory_format=torch.channels_last)}) == fp
    changed = {**sd, "b": sd["b"] + 1e-3}
    assert weights_fingerprint(changed) != fp
    assert weights_fingerprint({"a": sd["a"], "b": sd["b"].reshape(12)}) != fp


def test_no_tmp_files_left(root):
    assert sorted(p.suffix for p in (root / "checkpoints").iterdir() if p.is_file()) == [".json", ".pt"]


def _held_by_another_live_process(root):
    """The training claim of CONFIG's baseline, held by a live process that is not this one."""
    other = baseline.Claims(_pt(root).parent / "training.claims", pid=os.getppid())
    assert other.try_claim(_pt(root).stem)
    return other


def test_a_baseline_in_training_elsewhere_is_not_trained_twice(tmp_path, data, trains):
    """Two sweeps on one checkpoint root: while one trains a baseline, the other does not
    train it too; asked not to wait it says who trains it, and a half-saved pair (weights
    without a summary yet) is left alone, not discarded as damaged."""
    root = tmp_path
    _held_by_another_live_process(root)
    _pt(root).parent.mkdir(parents=True, exist_ok=True)
    _pt(root).write_bytes(b"half-saved")
    with pytest.raises(BaselineInTraining, match=f"being trained by pid {os.getppid()}"):
        get_baseline(root, CONFIG, data, progress=False, wait=False)
    assert trains == [] and _pt(root).read_bytes() == b"half-saved"


def test_in_training_is_true_only_while_a_live_process_trains_without_a_checkpoint(tmp_path):
    """What a sweep that handed a group to its trainer looks at before each job: a live holder
    and no checkpoint yet means in training; a dead holder, no holder, or a saved pair does not."""
    assert not baseline.in_training(tmp_path, CONFIG)  # nobody trains it
    other = _held_by_another_live_process(tmp_path)
    assert baseline.in_training(tmp_path, CONFIG)
    _pt(tmp_path).write_bytes(b"weights")
    _pt(tmp_path).with_suffix(".json").write_text("{}")
    assert not baseline.in_training(tmp_path, CONFIG)  # saved: the holder is about to let go
    for p in (_pt(tmp_path), _pt(tmp_path).with_suffix(".json")):
        p.unlink()
    other.release(_pt(tmp_path).stem)
    dead = baseline.Claims(_pt(tmp_path).parent / "training.claims", pid=dead_pid())
    assert dead.try_claim(_pt(tmp_path).stem) and not baseline.in_training(tmp_path, CONFIG)  # a dead trainer


def test_waiting_for_a_baseline_in_training_loads_its_checkpoint(root, clean, data, trains, monkeypatch):
    """wait=True: look again until the trainer's checkpoint is there; then load it, no training."""
    saved = {p.name: p.read_bytes() for p in _pt(root).parent.glob(_pt(root).stem + ".*")}
    for name in saved:
        (_pt(root).parent / name).unlink()
    other = _held_by_another_live_process(root)
    looks = []

    def trainer_finishes(seconds):  # the other sweep saves its checkpoint and lets go
        looks.append(seconds)
        for name, content in saved.items():
            (_pt(root).parent / name).write_bytes(content)
        other.release(_pt(root).stem)

    monkeypatch.setattr(baseline.time, "sleep", trainer_finishes)
    model, meta = get_baseline(root, CONFIG, data, progress=False)
    assert trains == [] and looks == [baseline.WAIT_POLL_S]
    assert meta["weights_fingerprint"] == clean[1]["weights_fingerprint"]


def test_a_dead_trainers_claim_is_taken_over_and_released_after_training(tmp_path, data, trains):
    dead = baseline.Claims(tmp_path / "checkpoints" / "training.claims", pid=dead_pid())
    assert dead.try_claim(_pt(tmp_path).stem)
    get_baseline(tmp_path, CONFIG, data, progress=False, wait=False)
    assert trains == [1]
    assert [p.name for p in (tmp_path / "checkpoints" / "training.claims").iterdir()] == [".lock"]  # released
