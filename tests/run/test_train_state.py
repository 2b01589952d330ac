"""bench/train_state.py: a dense baseline killed after an epoch goes on from that epoch and ends
with the weights an uninterrupted run gives; a state that is not this run's is ignored."""
from __future__ import annotations

import warnings

import pytest
import torch

import bench.train
import bench.train_state
from bench.baseline import checkpoint_path, get_baseline, training_state_path
from bench.data import load_splits

CONFIG = {"network": "digitnet", "dataset": "digits", "seed": 3,
          "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
          "data": {"val_fraction": 0.1, "train_subset": None}}


@pytest.fixture(scope="module")
def data():
    return load_splits("digits")


@pytest.fixture(autouse=True)
def keep_every_epoch(monkeypatch):
    """digitnet's epochs take well under train_state.EVERY_S: keep the state after each one."""
    monkeypatch.setattr(bench.train_state, "EVERY_S", 0.0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    _, meta = get_baseline(tmp_path_factory.mktemp("whole"), CONFIG, data, progress=False)
    return meta


class Killed(Exception):
    pass


def _kill_at_validation(monkeypatch, n: int) -> None:
    """The run dies in its n-th per-epoch validation: epochs 1..n-1 are finished and kept."""
    real, calls = bench.train.evaluate, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.train, "evaluate", dying)


def test_killed_baseline_goes_on_from_its_last_epoch(tmp_path, data, uninterrupted, monkeypatch):
    state = training_state_path(checkpoint_path(tmp_path, CONFIG))
    with monkeypatch.context() as m:
        _kill_at_validation(m, 3)
        with pytest.raises(Killed):
            get_baseline(tmp_path, CONFIG, data, progress=False)
    assert state.exists() and not checkpoint_path(tmp_path, CONFIG).exists()
    trained = []
    real = bench.train.train
    monkeypatch.setattr("bench.baseline.train", lambda *a, **k: trained.append(real(*a, **k)) or trained[-1])
    _, meta = get_baseline(tmp_path, CONFIG, data, progress=False)
    assert trained[0]["resumed_epochs"] == 2 and meta["resumed_epochs"] == 2
    assert meta["weights_fingerprint"] == uninterrupted["weights_fingerprint"]
    assert meta["acc_val"] == uninterrupted["acc_val"] and meta["acc_test"] == uninterrupted["acc_test"]
    assert "resumed_epochs" not in uninterrupted
    assert not state.exists()  # the checkpoint is written: the state has served


@pytest.mark.parametrize("foreign, says", [
    ("garbage", "is unreadable"),
    ("other run", "belongs to another run"),
    ("other shapes", "does not fit the network"),
])
def test_a_state_not_of_this_run_is_ignored(tmp_path, data, uninterrupted, monkeypatch, foreign, says):
    state = training_state_path(checkpoint_path(tmp_path, CONFIG))
    if foreign == "garbage":
        state.parent.mkdir(parents=True)
        state.write_bytes(b"not a torch file")
    elif foreign == "other run":  # another seed's run, killed after its first epoch, left at this run's path
        other = {**CONFIG, "seed": 4}
        with monkeypatch.context() as m:
            _kill_at_validation(m, 2)
            with pytest.raises(Killed):
                get_baseline(tmp_path, other, data, progress=False)
        training_state_path(checkpoint_path(tmp_path, other)).rename(state)
    elif foreign == "other shapes":  # this run's state, but the network's code has changed since
        with monkeypatch.context() as m:
            _kill_at_validation(m, 2)
            with pytest.raises(Killed):
                get_baseline(tmp_path, CONFIG, data, progress=False)
        kept = torch.load(state, weights_only=True)
        name = next(iter(kept["model"]))
        kept["model"][name] = torch.zeros(3, 3)
        torch.save(kept, state)
    with pytest.warns(UserWarning, match=says):
        _, meta = get_baseline(tmp_path, CONFIG, data, progress=False)
    assert "resumed_epochs" not in meta
    assert meta["weights_fingerprint"] == uninterrupted["weights_fingerprint"]


def test_a_run_without_state_path_starts_at_epoch_one(data):
    """``train`` without ``state_path`` (every fine-tuning run) neither keeps nor takes a state."""
    from bench.models import build_network

    model = build_network("digitnet", data.input_shape, data.num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = bench.train.train(model, data, {"epochs": 1, "batch_size": 64}, progress=False)
    assert summary["resumed_epochs"] == 0 and summary["resumed_s"] == 0.0


def test_state_is_kept_only_every_few_seconds(tmp_path, data, monkeypatch):
    """With EVERY_S far above a digitnet epoch, a run killed in epoch 3 left no state."""
    monkeypatch.setattr(bench.train_state, "EVERY_S", 3600.0)
    with pytest.raises(Killed):
        with monkeypatch.context() as m:
            _kill_at_validation(m, 3)
            get_baseline(tmp_path, CONFIG, data, progress=False)
    assert not training_state_path(checkpoint_path(tmp_path, CONFIG)).exists()
