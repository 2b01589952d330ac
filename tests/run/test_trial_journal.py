"""A tuning job killed between trials resumes at the next trial: finished trials come from the
journal (bench.trial_journal), and the search ends as one uninterrupted run would. A fine-tuning
run killed between epochs goes on from its last kept epoch, in a tuning job or not."""
from __future__ import annotations

import pytest
import torch

import bench.train_state
from bench.cli import main
from bench.records import read_records
from bench.trial_journal import TrialJournal
from bench.tuning import tuned

ACC = {"sgd@0.01": 70.0, "sgd@0.03": 80.0, "adam@0.01": 75.0, "adam@0.03": 60.0, "sgd@0.09": None,
       "adam@0.00333333": 74.0}


class Killed(BaseException):
    """The machine going away mid-sweep (not an Exception: nothing records it)."""


def _finetune(calls: list, kill_at: str | None = None):
    def finetune(model, pick):
        label = f"{pick['optimizer']}@{pick['lr']!r}"
        if label == kill_at:
            raise Killed()
        calls.append(label)
        if ACC[label] is None:
            raise FloatingPointError("diverged")
        with torch.no_grad():
            model.weight.fill_(pick["lr"])  # the trial's "weights" say which pick made them
        ctx = type("Ctx", (), {})()
        ctx.extras = {"made_by": label}
        return ctx
    return finetune


def _start() -> torch.nn.Module:
    """The compressed model every trial starts from: the same weights on every call."""
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.zero_()
    return model


def _search(journal, finetune):
    val = {}

    def evaluate(model):  # the accuracy of the last pick fine-tuned on this model
        return ACC[val["label"]]

    def ft(model, pick):
        val["label"] = f"{pick['optimizer']}@{pick['lr']!r}"
        return finetune(model, pick)
    return tuned(ft, evaluate, _start(), [0.01, 0.03], ["sgd", "adam"], 1, None, journal=journal)


def test_a_killed_search_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path):
    whole_calls: list = []
    whole_model, whole_ctx, whole_rec = _search(TrialJournal(tmp_path / "whole"), _finetune(whole_calls))
    assert whole_calls == ["sgd@0.01", "sgd@0.03", "sgd@0.09", "adam@0.01", "adam@0.03", "adam@0.00333333"]
    assert whole_rec["pick"] == {"optimizer": "sgd", "lr": 0.03} and "resumed" not in whole_rec

    journal = tmp_path / "killed"
    with pytest.raises(Killed):
        _search(TrialJournal(journal), _finetune([], kill_at="adam@0.01"))
    assert set(TrialJournal(journal).trials) == {"sgd@0.01", "sgd@0.03", "sgd@0.09"}  # diverged ones too
    calls: list = []
    model, ctx, rec = _search(TrialJournal(journal), _finetune(calls))
    assert calls == ["adam@0.01", "adam@0.03", "adam@0.00333333"]  # only what the killed run had not finished
    assert set(rec["resumed"]) == {"sgd@0.01", "sgd@0.03", "sgd@0.09"}
    assert {k: v for k, v in rec.items() if k != "resumed"} == whole_rec
    assert model.weight.item() == pytest.approx(0.03) == whole_model.weight.item()  # the winner's weights, restored
    assert ctx.extras == whole_ctx.extras == {"made_by": "sgd@0.03"}


def test_a_winner_whose_weights_are_gone_runs_again(tmp_path):
    journal = tmp_path / "j"
    with pytest.raises(Killed):
        _search(TrialJournal(journal), _finetune([], kill_at="adam@0.01"))
    (journal / "best.pt").write_bytes(b"torn")
    calls: list = []
    model, _, rec = _search(TrialJournal(journal), _finetune(calls))
    assert calls == ["adam@0.01", "adam@0.03", "adam@0.00333333", "sgd@0.03"]  # the winner again, seeded
    assert rec["pick"] == {"optimizer": "sgd", "lr": 0.03} and model.weight.item() == pytest.approx(0.03)


KILL_SECOND_TRIAL_ONCE = """
def finetune(self, model, ctx):  # the machine goes away during the sweep's second trial
    TRIALS.append(1)
    if len(TRIALS) == 2 and not os.environ.get("TNBENCH_TEST_RESUMED"):
        raise KeyboardInterrupt
    super().finetune(model, ctx)
"""


def test_a_sweep_killed_mid_tuning_resumes_the_job_and_clears_its_journal(tmp_path, tiny_suite, svd_plugin,
                                                                          monkeypatch):
    plugin = svd_plugin("killed-once-svd", KILL_SECOND_TRIAL_ONCE, imports="import os\nTRIALS = []")
    suite = tiny_suite(methods=["killed-once-svd"], ratios=[2], seeds=[0], lr_grid=[0.01, 0.05])
    args = ["--plugin", str(plugin), "--suite", str(suite), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 130  # interrupted: the job has no record
    runs = tmp_path / "whole" / suite.stem / "runs.jsonl"
    assert not runs.exists() or read_records(runs) == []
    journals = list((tmp_path / "whole" / "checkpoints" / "tuning").iterdir())
    assert len(journals) == 1 and set(TrialJournal(journals[0]).trials) == {"0.01"}
    monkeypatch.setenv("TNBENCH_TEST_RESUMED", "1")
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    rec = read_records(tmp_path / "whole" / suite.stem / "runs.jsonl")[-1]
    assert rec["status"] == "ok" and set(rec["lr_tuning"]["resumed"]) == {"0.01"}
    assert not journals[0].exists()  # recorded: the journal goes
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0  # the same job, never killed
    clean = read_records(tmp_path / "clean" / suite.stem / "runs.jsonl")[-1]
    assert clean["lr_tuning"]["val_acc"] == rec["lr_tuning"]["val_acc"]
    assert clean["acc_after_finetune"] == rec["acc_after_finetune"]


def test_trials_of_another_start_are_dropped(tmp_path):
    journal = tmp_path / "j"
    with pytest.raises(Killed):
        _search(TrialJournal(journal), _finetune([], kill_at="adam@0.01"))
    calls: list = []
    val = {}

    def ft(model, pick):
        val["label"] = f"{pick['optimizer']}@{pick['lr']!r}"
        return _finetune(calls)(model, pick)
    other_start = _start()
    with torch.no_grad():
        other_start.bias.add_(1.0)  # the compression landed elsewhere this time
    tuned(ft, lambda m: ACC[val["label"]], other_start, [0.01, 0.03], ["sgd", "adam"], 1, None,
          journal=TrialJournal(journal))
    assert calls[:3] == ["sgd@0.01", "sgd@0.03", "sgd@0.09"]  # every trial again, from this start


def _kill_after_run_saves(monkeypatch, n: int | None) -> list:
    """Count the fine-tuning runs' epoch states written (``run-*.pt``); with ``n``, the machine
    goes away right after the n-th."""
    real, saved = bench.train_state.save, []

    def save(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if path.name.startswith("run-"):
            saved.append(path.name)
            if len(saved) == n:
                raise KeyboardInterrupt
    monkeypatch.setattr(bench.train_state, "save", save)
    return saved


@pytest.mark.parametrize("kill_after, left", [(5, 1 + 3), (8, 1)])
def test_a_finetuning_run_killed_between_epochs_goes_on_from_its_last_epoch(tmp_path, tiny_suite, monkeypatch,
                                                                             kill_after, left):
    """Seed 0 tunes (lr 0.01 then 0.05, 3 epochs each), seed 1 runs the pick: killed after the
    5th kept epoch (trial 0.05's second) or the 8th (seed 1's second), the next sweep runs only
    the epochs left and records what an uninterrupted sweep records."""
    monkeypatch.setattr(bench.train_state, "EVERY_S", 0.0)
    suite = tiny_suite(methods=["svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05],
                       finetune={"epochs": 3, "batch_size": 64, "lr": 0.01})
    args = ["--suite", str(suite), "--no-progress", "--out"]
    with monkeypatch.context() as m:
        _kill_after_run_saves(m, None)
        assert main([*args, str(tmp_path / "clean")]) == 0
    with monkeypatch.context() as m:
        _kill_after_run_saves(m, kill_after)
        assert main([*args, str(tmp_path / "killed")]) == 130
    states = list((tmp_path / "killed" / "checkpoints" / "tuning").glob("*/run-*.pt"))
    assert len(states) == 1  # the run in progress; a finished trial's states went with it
    with monkeypatch.context() as m:
        resumed_saves = _kill_after_run_saves(m, None)
        assert main([*args, str(tmp_path / "killed")]) == 0
    assert len(resumed_saves) == left  # the epochs left, not the killed run's again
    clean = {r["seed"]: r for r in read_records(tmp_path / "clean" / suite.stem / "runs.jsonl")}
    killed = {r["seed"]: r for r in read_records(tmp_path / "killed" / suite.stem / "runs.jsonl")}
    for seed in (0, 1):
        assert killed[seed]["acc_after_finetune"] == clean[seed]["acc_after_finetune"]
        assert killed[seed]["lr_tuning"]["pick"] == clean[seed]["lr_tuning"]["pick"]
    resumed_seed = 0 if kill_after == 5 else 1
    assert killed[resumed_seed]["time_resumed_epochs_s"] > 0 and "time_resumed_epochs_s" not in clean[resumed_seed]
    assert killed[resumed_seed]["time_finetune_s"] >= killed[resumed_seed]["time_resumed_epochs_s"]
    assert not list((tmp_path / "killed" / "checkpoints" / "tuning").iterdir())  # recorded: nothing kept
