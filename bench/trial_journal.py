"""Tuning trials that outlive their sweep. A job that picks its fine-tuning optimizer and lr
runs one fine-tuning per grid value; on a CPU that can take hours (VGG-16's ADTN tuning: 6 to
10 trials of 10 to 20 minutes each), longer than a machine may be held. The journal keeps each
finished trial's validation accuracy and time, and the weights of the best one so far, under
``<checkpoints root>/tuning/<job key>-<baseline fingerprint>/``; a sweep that runs the job again
takes those trials as they are and runs only the rest.

Every trial starts from a copy of the same model and ``bench.train`` seeds each run with the
job's seed, so a resumed search makes the decisions, and keeps the weights, that one run from
start to end would. The journal holds the fingerprint of that start: trials of another start
(the compression re-run on another thread count) are dropped. The record lists the trials taken from the journal and their seconds
(``lr_tuning.resumed``), which count in its fine-tuning time. The folder is removed once the
job's record is ok or skipped.

The same folder keeps the state of each fine-tuning run in progress, after its last finished
epoch (``bench.train_state``; ``run-<pick>-<call>.pt``), for every job that fine-tunes, tuning
or not: a 10-epoch VGG-16 run killed at epoch 8 goes on from epoch 9. A state is taken up only
by a run with the same recipe, seed and start weights; a trial's states go once the trial is in
the journal, the rest with the folder. Seconds of epochs taken from a state count in the trial's
and the record's times.
"""
from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from bench.atomic_file import atomic_write

INDEX = "trials.json"
BEST = "best.pt"


def resumed_seconds(tuning: dict | None) -> float:
    """Seconds of the trials a record's tuning took from a journal (``lr_tuning.resumed``):
    spent by an earlier sweep, they count in the record's times all the same."""
    return float(sum(((tuning or {}).get("resumed") or {}).values()))


class TrialsLeftForLater(Exception):
    """The time budget has no room for the next trial of a search: the job stops, unrecorded,
    its finished trials kept here; a later run goes on from them."""


class TrialJournal:
    """The finished trials of one tuning job (label -> val accuracy or None when it diverged,
    seconds) and the weights and extras of the best one. ``room``: asked before a trial runs
    (``bench.cost.Budget.room_for_trial``); None: always room."""

    def __init__(self, folder: Path, room: Callable[[], bool] | None = None):
        self.folder, self.room = Path(folder), room
        try:
            index = json.loads((self.folder / INDEX).read_text())
        except (OSError, ValueError):
            index = {}
        self.trials: dict[str, dict[str, Any]] = index.get("trials", {}) if isinstance(index, dict) else {}
        self.best_label: str | None = index.get("best") if isinstance(index, dict) else None
        self.start: str | None = index.get("start") if isinstance(index, dict) else None
        #: seconds of epochs taken from kept run states in this process, per trial label
        self.resumed_epochs_s: dict[str, float] = {}

    def start_from(self, start: str) -> None:
        """Use the trials only if they started from the model whose weights fingerprint is
        ``start``: a compression that ran again on another thread count (or code) can start
        elsewhere by a rounding, and trials from two starts are not one search."""
        if self.trials and self.start != start:
            self.trials, self.best_label = {}, None
        self.start = start

    def run_state(self, label: str, call: int) -> Path:
        """Where the state of fine-tuning run ``call`` (0, 1, ...: a method may train more than
        once) of trial ``label`` is kept between epochs."""
        return self.folder / f"run-{label}-{call}.pt"

    def note_resumed(self, label: str, seconds: float) -> None:
        """A run of trial ``label`` went on from a kept state that had spent ``seconds``."""
        self.resumed_epochs_s[label] = self.resumed_epochs_s.get(label, 0.0) + seconds

    def get(self, label: str) -> dict[str, Any] | None:
        return self.trials.get(label)

    def make_room(self, label: str) -> None:
        """Raise ``TrialsLeftForLater`` when trial ``label`` does not fit in the time left."""
        if self.room is not None and not self.room():
            raise TrialsLeftForLater(f"no time left for trial {label} ({len(self.trials)} kept in {self.folder})")

    def put(self, label: str, val_acc: float | None, seconds: float, model: torch.nn.Module | None = None,
            extras: dict | None = None) -> None:
        """Keep a finished trial; with ``model``, also its weights as the best so far (written
        before the index names it, so the index never names weights that are not there)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if model is not None:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_write(self.folder / BEST, lambda f: torch.save({"label": label, "state": state,
                                                                   "extras": extras or {}}, f))
            self.best_label = label
        self.trials[label] = {"val_acc": val_acc, "seconds": seconds + self.resumed_epochs_s.get(label, 0.0)}
        atomic_write(self.folder / INDEX, lambda f: f.write(
            json.dumps({"trials": self.trials, "best": self.best_label, "start": self.start}, indent=1).encode()))
        for state in self.folder.glob(f"run-{glob.escape(label)}-*.pt"):  # the trial is kept: its runs are done
            state.unlink(missing_ok=True)

    def best_accuracy(self) -> float | None:
        accs = [t["val_acc"] for t in self.trials.values() if t.get("val_acc") is not None]
        return max(accs) if accs else None

    def restore(self, label: str, model: torch.nn.Module) -> dict | None:
        """Load the weights of trial ``label`` into ``model`` and return its extras; None when
        the journal does not hold them (or they do not fit: then the trial runs again)."""
        if label != self.best_label:
            return None
        try:
            saved = torch.load(self.folder / BEST, map_location="cpu", weights_only=True)
            if saved.get("label") != label:
                return None
            model.load_state_dict(saved["state"])
        except Exception:  # noqa: BLE001 - a missing, torn or foreign file: run the trial again
            return None
        return saved.get("extras") or {}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class TrialJournals:
    """Where the tuning jobs of one checkpoint cache keep their journals."""

    def __init__(self, root: Path):
        self.root = Path(root) / "checkpoints" / "tuning"

    def for_job(self, job_key: str, baseline_fingerprint: str | None,
                room: Callable[[], bool] | None = None) -> TrialJournal:
        return TrialJournal(self.root / f"{job_key}-{baseline_fingerprint or 'unknown'}", room)
