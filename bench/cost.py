"""Cost model: how long a job will take on a device, from a calibration measured there.

Why: GPU windows are short (minutes), so a sweep must know before starting a job whether it
can finish (``--time-budget``), skip factorisations that would eat the window
(``factorize_time_cap_s``) and say up front what a suite costs (``--dry-run``).

A calibration (``python -m bench.perf calibrate``, ``bench/perf/calibrate.py``) is a small
JSON file: train and eval images/s of each network (dense, at one batch size) and, per
method, a power law ``t = a * N**b`` of the factorisation time (allocation + compress) in the
number N of a layer's weights (ADTN: seconds per pre-fit step, times its steps). The model:

    job = baseline (once per group, unless its checkpoint is cached)
        + factorisation (sum over the job's layers)
        + fine-tuning epochs x train images / train img/s  x (len(lr_grid) on the tuning
          seed of a method that tunes its lr, else 1)   [+ ADTN's weight generation per step]
        + evaluations (test before/after, val after each epoch and after each lr trial)

Approximations (said where they are used): a compressed network trains at the dense
network's speed (ADTN adds its generation time per step), the factorisation time ignores the
knob (measured near 32x), NN-BCD's gradient-free fine-tuning is costed as SGD epochs.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_DIR = REPO / "results" / "calibration"
VERSION = 1
#: the budget's clock (seconds); a module attribute so a test can inject a deterministic one
CLOCK = time.time

#: (train, test) images of the full datasets whose loaders do not say (CIFAR reads its spec)
DATASET_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "digits": (1438, 359)}
#: ADTN: an L-BFGS polish iteration costs up to 1.25 objective evaluations (torch's max_eval)
POLISH_EVALS_PER_ITER = 1.25


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` (a calibration is per kind; the file records the device's name)."""
    return "cuda" if str(device).startswith("cuda") or (str(device) == "auto" and _cuda()) else "cpu"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def default_path(kind: str) -> Path:
    return CALIBRATION_DIR / f"{kind}.json"


def load_calibration(path: Path | str) -> dict[str, Any] | None:
    """The calibration in ``path``, or None when there is none (a bad file is an error)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        cal = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"calibration {path}: not valid JSON ({e})") from None
    if not isinstance(cal, dict) or cal.get("version") != VERSION or "networks" not in cal:
        raise ValueError(f"calibration {path}: not a version-{VERSION} calibration "
                         f"(rerun python -m bench.perf calibrate)")
    cal["path"] = str(path)
    return cal


def dataset_sizes(name: str) -> tuple[int, int]:
    """(train, test) images of a full dataset, without reading it."""
    if name in DATASET_SIZES:
        return DATASET_SIZES[name]
    from bench.data import cifar

    spec = cifar.SPECS.get(name)
    if spec is None:
        raise KeyError(f"no size known for dataset {name!r}")
    train = sum(spec.rows[f] for f, _ in spec.train)
    test = sum(spec.rows[f] for f, _ in spec.test)
    return train, test


def split_sizes(job) -> tuple[int, int, int]:
    """(train, val, test) images of a job's data config, as ``bench.data.load_splits`` cuts them."""
    n, n_test = dataset_sizes(job.dataset)
    n_val = int(round(n * job.data.get("val_fraction", 0.1)))
    n_train = n - n_val
    if job.data.get("train_subset"):
        n_train = min(n_train, int(job.data["train_subset"]))
    return n_train, n_val, n_test


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of t = a * N**b by least squares in log-log; b clipped to [0, 3] (a time that
    falls with size is noise). One point: b = 1."""
    pts = [(math.log(n), math.log(max(t, 1e-7))) for n, t in points if n > 0]
    if not pts:
        raise ValueError("no points to fit")
    if len(pts) == 1:
        b = 1.0
    else:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        var = sum((x - mx) ** 2 for x, _ in pts)
        b = sum((x - mx) * (y - my) for x, y in pts) / var if var else 1.0
    b = min(max(b, 0.0), 3.0)
    a = math.exp(sum(y - b * x for x, y in pts) / len(pts))
    return a, b


class CostModel:
    """Seconds of a job (and of its dense baseline) on the calibrated device."""

    def __init__(self, calibration: dict[str, Any]):
        self.cal = calibration
        self.path = calibration.get("path", "?")
        self._layers: dict[tuple, dict[str, int]] = {}

    # --- pieces ------------------------------------------------------------------------------
    def _net(self, network: str) -> dict[str, Any]:
        net = self.cal["networks"].get(network)
        if net is None:
            raise KeyError(f"calibration {self.path} has no network {network!r} "
                           f"(it has {', '.join(sorted(self.cal['networks']))})")
        return net

    def train_s(self, network: str, images: float) -> float:
        return images / self._net(network)["train_img_s"]

    def eval_s(self, network: str, images: float) -> float:
        return images / self._net(network)["eval_img_s"]

    def layer_sizes(self, job) -> dict[str, int]:
        """Weights of each target layer, from a network built on the meta device (no memory)."""
        key = (job.network, job.dataset, tuple(job.layers))
        if key not in self._layers:
            from bench.layers import get_layer
            from bench.suite import meta_network

            model = meta_network(job.network, job.dataset)
            self._layers[key] = {n: get_layer(model, n).weight.numel() for n in job.layers}
        return self._layers[key]

    def factorize_s(self, job) -> float | None:
        """Estimated allocation + compression time of the job's layers; None when the
        calibration has no entry for the method (then nothing is capped)."""
        if job.method == "dense":
            return 0.0
        law = (self.cal.get("factorize") or {}).get(job.method)
        if law is None:
            return None
        sizes = self.layer_sizes(job).values()
        total = sum(law["a"] * n ** law["b"] for n in sizes)
        if law.get("per_step"):
            start = law.get("start") or {"a": 0.0, "b": 1.0}
            total = total * self._adtn_steps(job) + sum(start["a"] * n ** start["b"] for n in sizes)
        return total

    @staticmethod
    def _adtn_steps(job) -> float:
        from bench.registry import get_method

        m = get_method(job.method, **job.options)
        return m.prefit_steps + POLISH_EVALS_PER_ITER * m.prefit_polish

    def baseline_s(self, job) -> float:
        """Training the dense baseline: epochs of the train split, a val evaluation per
        epoch, the test evaluation."""
        n_train, n_val, n_test = split_sizes(job)
        epochs = float(job.train["epochs"])
        return (self.train_s(job.network, epochs * n_train)
                + self.eval_s(job.network, math.ceil(epochs) * n_val + n_val + n_test))

    def finetune_s(self, job, tuning: bool) -> float:
        """Fine-tuning (all lr trials on the tuning seed) and its evaluations."""
        from bench.registry import get_method

        n_train, n_val, n_test = split_sizes(job)
        evals = 2 * n_test + n_val  # accuracy before and after (test), after (val)
        if job.method == "dense" or job.fit_only:
            return self.eval_s(job.network, n_test if job.fit_only else evals)
        method = get_method(job.method, **job.options)
        trials = len(job.lr_grid) if tuning and job.lr_grid and method.uses_finetune_lr else 1
        epochs = float(job.finetune["epochs"])
        per_trial = self.train_s(job.network, epochs * n_train) + self.eval_s(
            job.network, (math.ceil(epochs) + (trials > 1)) * n_val)
        law = (self.cal.get("factorize") or {}).get(job.method)
        if law is not None and law.get("per_step"):  # ADTN generates its weights every step
            steps = epochs * max(1, n_train // int(job.finetune["batch_size"]))
            per_trial += steps * sum(law["a"] * n ** law["b"] for n in self.layer_sizes(job).values())
        return trials * per_trial + self.eval_s(job.network, evals)

    def job_s(self, job, tuning: bool, with_baseline: bool = False) -> float:
        """Whole job; ``with_baseline`` adds training its dense baseline."""
        t = (self.factorize_s(job) or 0.0) + self.finetune_s(job, tuning)
        t += float(self.cal.get("job_overhead_s", {}).get(job.network, 0.0))
        return t + (self.baseline_s(job) if with_baseline else 0.0)

    def suite_s(self, jobs: list, cached: set[str] = frozenset()) -> tuple[float, dict[str, float]]:
        """(total seconds, seconds per job key) of a job list: each baseline once (none for
        baseline keys in ``cached``), the tuning seed's lr trials."""
        from bench.records import config_key
        from bench.suite import tuner_keys

        tuners = tuner_keys(jobs)
        seen = set(cached)
        per_job = {}
        for j in jobs:
            bkey = config_key(j.baseline_config)
            per_job[j.key] = self.job_s(j, j.key in tuners, with_baseline=bkey not in seen)
            seen.add(bkey)
        return sum(per_job.values()), per_job


def baseline_cached(root: Path, job) -> bool:
    """Whether ``job``'s dense baseline is already trained under ``root`` (checkpoint pair)."""
    from bench.baseline import checkpoint_path

    pt = checkpoint_path(root, job.baseline_config)
    return pt.is_file() and pt.with_suffix(".json").is_file()


class Budget:
    """``--time-budget``: admits a job only if the cost model says it finishes in the time
    left. Remaining time is measured on ``CLOCK`` from construction; a job whose dense
    baseline is neither cached nor trained yet in this run pays for it (once per baseline).
    Picklable, so worker processes carry a copy (each tracks its own baselines)."""

    def __init__(self, seconds: float, model: CostModel, jobs: list, baseline_root: Path | None = None):
        from bench.suite import tuner_keys

        self.seconds, self.model = float(seconds), model
        self.start = CLOCK()
        self.tuners = tuner_keys(jobs)
        self.baseline_root = Path(baseline_root) if baseline_root is not None else None
        self.paid: set[str] = set()

    def remaining(self) -> float:
        return self.seconds - (CLOCK() - self.start)

    def estimate(self, job) -> float:
        from bench.records import config_key

        bkey = config_key(job.baseline_config)
        unpaid = bkey not in self.paid and not (self.baseline_root is not None
                                                and baseline_cached(self.baseline_root, job))
        return self.model.job_s(job, job.key in self.tuners, with_baseline=unpaid)

    def __call__(self, job) -> bool:
        """True: start ``job`` now (its baseline is then paid for)."""
        from bench.records import config_key

        if self.estimate(job) > self.remaining():
            return False
        self.paid.add(config_key(job.baseline_config))
        return True
