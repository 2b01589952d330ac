"""Cost model: how long a job will take on a device, from a calibration measured there.

Why: GPU windows are short (minutes), so a sweep must know before starting a job whether it
can finish (``--time-budget``), skip factorisations that would eat the window
(``factorize_time_cap_s``) and say up front what a suite costs (``--dry-run``).

A calibration (``python -m bench.perf calibrate``, ``bench/perf/calibrate.py``) is a small
JSON file: train and eval images/s of each network (dense, at one batch size), per precision
(``networks.<net>.precisions.<bf16|fp32>``; the top-level figures are the device's default
precision, all that calibrations made before precisions carry), what ``precision: auto``
resolved to there (``auto_precision``), the seconds of a near-empty training step
(``step_floor_s``) and, per method, a power law ``t = a * N**b`` of the factorisation time
(allocation + compress) in the number N of a layer's weights (ADTN: seconds per pre-fit step,
in the generator's size 2**Q, and its start apart). The model, stage by stage (``stages``,
named as the records time them):

    baseline  (once per baseline, unless its checkpoint is cached; checkpoint's time_train_s)
      = train steps in the train recipe's precision + a val pass per epoch + the test pass
    cache     (once per baseline group with finetune.scope after_frozen_prefix; time_prefix_cache_s)
      = prefix forwards: cache_views x train images in the fine-tuning precision + val + test
    factorize (time_compress_s) = sum over the job's layers of the method's law
    finetune  (time_finetune_s) = trials x (train steps + a val pass per epoch
                                  [+ ADTN: weight generation per step, re-fits of staged layers])
                                  + a val pass per trial when it tunes
    eval      (time_total_s minus the others) = test/val passes before and after fine-tuning,
                                  bias calibration, the per-job overhead

After a frozen prefix every training step and evaluation runs only the suffix: its share of a
forward pass's FLOPs (matmuls and convolutions, counted on a meta-device network), a training
step never cheaper than ``step_floor_s``.

Approximations (said where they are used): a compressed network trains at the dense
network's speed (ADTN adds its generation time per step), the factorisation time ignores the
knob (measured near 32x; ADTN's grows with its depth), NN-BCD's gradient-free fine-tuning is
costed as SGD epochs, ``lr_extend``'s extra trials are counted as ``lr_extend`` (``trials``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import InputError

if TYPE_CHECKING:  # bench.compressor imports torch: the dry run's planning imports it when it needs it
    from bench.compressor import StepWork

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_DIR = REPO / "results" / "calibration"
#: still 1: everything added since (precisions, auto_precision, step_floor_s) is optional
VERSION = 1
#: the budget's clock (seconds); a module attribute so a test can inject a deterministic one
CLOCK = time.time
#: the stages of a job's time (``CostModel.stages``), in the order they run
STAGES = ("baseline", "cache", "factorize", "finetune", "eval")

#: seconds of a training step whatever its FLOPs, for calibrations made before step_floor_s
DEFAULT_STEP_FLOOR_S = 1e-3


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` (a calibration is per kind; the file records the device's name)."""
    return "cuda" if str(device).startswith("cuda") or (str(device) == "auto" and _cuda()) else "cpu"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def default_path(kind: str) -> Path:
    return CALIBRATION_DIR / f"{kind}.json"


class CalibrationError(InputError, ValueError):
    """A calibration file that is not valid JSON or not of this version."""


def load_calibration(path: Path | str) -> dict[str, Any] | None:
    """The calibration in ``path``, or None when there is none (a bad file is an error)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        cal = json.loads(path.read_text())
    except ValueError as e:
        raise CalibrationError(f"calibration {path}: not valid JSON ({e})") from None
    if not isinstance(cal, dict) or cal.get("version") != VERSION or "networks" not in cal:
        raise CalibrationError(f"calibration {path}: not a version-{VERSION} calibration "
                         f"(rerun python -m bench.perf calibrate)")
    cal["path"] = str(path)
    return cal


def dataset_sizes(name: str) -> tuple[int, int]:
    """(train, test) images of a full dataset, as its registration states (no data read)."""
    from bench.registry import dataset_spec

    sizes = dataset_spec(name).sizes
    if sizes is None:
        raise KeyError(f"dataset {name!r} was registered without sizes (register_dataset(..., sizes=(train, test)))")
    return sizes


def augments(name: str) -> bool:
    """Whether the dataset's loader names an augmentation (CIFAR's crop-flip), without reading it."""
    from bench.data import cifar

    return name in cifar.SPECS


def split_sizes(job) -> tuple[int, int, int]:
    """(train, val, test) images of a job's data config, as ``bench.data.load_splits`` cuts them."""
    n, n_test = dataset_sizes(job.dataset)
    n_val = int(round(n * job.data.get("val_fraction", 0.1)))
    n_train = n - n_val
    if job.data.get("train_subset"):
        n_train = min(n_train, int(job.data["train_subset"]))
    return n_train, n_val, n_test


def train_steps(epochs: float, n: int, batch_size: int) -> tuple[int, int]:
    """(optimizer steps, validation passes) of ``bench.train.train``: fractional epochs are a
    share of an epoch's steps; no epochs is one validation pass and no step."""
    per_epoch = max(1, n // int(batch_size))
    if epochs <= 0:
        return 0, 1
    steps = max(1, round(epochs * per_epoch))
    return steps, math.ceil(steps / per_epoch)


def scoped(job) -> bool:
    """Whether the job fine-tunes after a frozen prefix (and so needs its group's cache); a
    method that does not fine-tune (dense) evaluates the whole network instead."""
    from bench.registry import METHODS

    return (not job.fit_only and (job.finetune or {}).get("scope", "all") == "after_frozen_prefix"
            and getattr(METHODS.get(job.method), "finetunes", True))


def cache_group(job) -> tuple | None:
    """What makes jobs share a frozen-prefix cache (``bench.job._scoped``: their baseline, the
    layers, the views, the precision), or None when the job needs none."""
    if not scoped(job):
        return None
    ft = job.finetune
    return (job.baseline_key, tuple(job.layers), int(ft.get("cache_views", 4)), ft.get("precision"))


def law(fit: dict[str, Any], n: float) -> float:
    """A calibrated power law at ``n``."""
    return fit["a"] * n ** fit["b"]


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
        self._works: dict[tuple, dict[str, tuple[StepWork, float]]] = {}  # (job key, calibrated knob)
        self._cuts: dict[tuple, tuple[str, float]] = {}

    # --- speeds ------------------------------------------------------------------------------
    def _net(self, network: str) -> dict[str, Any]:
        net = self.cal["networks"].get(network)
        if net is None:
            raise KeyError(f"calibration {self.path} has no network {network!r} "
                           f"(it has {', '.join(sorted(self.cal['networks']))})")
        return net

    def precision(self, recipe_precision: str | None) -> str:
        """``bf16`` or ``fp32``: what a recipe's ``precision`` runs as on the calibrated device
        (``bench.precision.resolve``; ``auto`` as the calibration recorded it, since a CPU's
        bf16 support is the calibrated machine's, not this one's)."""
        import torch

        from bench import precision as prec

        if recipe_precision == "auto" and self.cal.get("auto_precision"):
            return self.cal["auto_precision"]
        return prec.resolve(recipe_precision, torch.device(self.cal.get("device", "cpu")))

    def speed(self, network: str, what: str, recipe_precision: str | None = None) -> float:
        """Images/s of ``what`` (train | eval) in the precision the recipe value resolves to:
        that precision's figure, else the top-level one (an older calibration, or a precision
        it did not measure)."""
        net = self._net(network)
        measured = (net.get("precisions") or {}).get(self.precision(recipe_precision)) or {}
        return measured.get(f"{what}_img_s") or net[f"{what}_img_s"]

    def train_s(self, network: str, images: float, precision: str | None = None) -> float:
        return images / self.speed(network, "train", precision)

    def eval_s(self, network: str, images: float, precision: str | None = None, share: float = 1.0) -> float:
        """Forward passes of ``images``; ``share``: the part of the network that runs."""
        return share * images / self.speed(network, "eval", precision)

    def step_floor_s(self) -> float:
        return float(self.cal.get("step_floor_s", DEFAULT_STEP_FLOOR_S))

    def _train_run_s(self, job, recipe: dict[str, Any], epochs: float, share: float) -> float:
        """One ``bench.train.train`` run: its steps (each at least the step floor) and its
        validation pass per epoch, on the ``share`` of the network after the cut."""
        n_train, n_val, _ = split_sizes(job)
        bs = int(recipe["batch_size"])
        steps, passes = train_steps(epochs, n_train, bs)
        step = max(share * self.train_s(job.network, min(bs, n_train), recipe.get("precision")), self.step_floor_s())
        return steps * step + self.eval_s(job.network, passes * n_val, recipe.get("precision"), share)

    # --- the network ---------------------------------------------------------------------------
    def layer_sizes(self, job) -> dict[str, int]:
        """Weights of each target layer, from a network built on the meta device (no memory)."""
        key = (job.network, job.dataset, tuple(job.layers))
        if key not in self._layers:
            from bench.layers import get_layer
            from bench.suite_check import meta_network

            model = meta_network(job.network, job.dataset)
            self._layers[key] = {n: get_layer(model, n).weight.numel() for n in job.layers}
        return self._layers[key]

    def cut(self, job) -> tuple[str, float]:
        """(first compressed layer, share of a forward pass's FLOPs from it on), on the meta
        network: what a step after the frozen prefix costs relative to a whole one."""
        key = (job.network, job.dataset, tuple(job.layers))
        if key not in self._cuts:
            import torch

            from bench.metrics import forward_flops
            from bench.prefix import cut, first_layer
            from bench.registry import dataset_spec
            from bench.suite_check import meta_network

            model, meta = meta_network(job.network, job.dataset), torch.device("meta")
            shape = tuple(dataset_spec(job.dataset).shape)
            first = first_layer(model, job.layers, torch.zeros(1, *shape, device=meta))
            held: list = []
            hook = model.get_submodule(first).register_forward_pre_hook(lambda m, i: held.append(i[0].shape[1:]))
            try:
                whole = forward_flops(model, shape, meta)
            finally:
                hook.remove()
            with cut(model, first):
                part = forward_flops(model, tuple(held[0]), meta)
            self._cuts[key] = (first, part / whole if whole and part is not None else 1.0)
        return self._cuts[key]

    def suffix_share(self, job) -> float:
        """The part of the network a job trains and evaluates: 1.0 unless it is scoped."""
        return self.cut(job)[1] if scoped(job) else 1.0

    # --- stages ------------------------------------------------------------------------------
    def baseline_s(self, job) -> float:
        """Training the dense baseline (steps and a val pass per epoch in the train recipe's
        precision), then its test pass (default precision)."""
        _, _, n_test = split_sizes(job)
        return self._train_run_s(job, job.train, float(job.train["epochs"]), 1.0) + self.eval_s(job.network, n_test)

    def cache_s(self, job) -> float:
        """Building a scoped job's frozen-prefix cache (``bench.prefix.build_cache``): the
        prefix on every training view in the fine-tuning precision (one view where the
        dataset does not augment), on val and test in the default one. 0 for other jobs."""
        if not scoped(job):
            return 0.0
        n_train, n_val, n_test = split_sizes(job)
        views = int(job.finetune.get("cache_views", 4)) if augments(job.dataset) else 1
        prefix = 1.0 - self.cut(job)[1]
        return (self.eval_s(job.network, views * n_train, job.finetune.get("precision"), prefix)
                + self.eval_s(job.network, n_val + n_test, None, prefix))

    def factorize_s(self, job) -> float | None:
        """Estimated allocation + compression time of the job's layers; None when the
        calibration has no entry for the method (then nothing is capped)."""
        if job.reference:
            return 0.0
        fit = (self.cal.get("factorize") or {}).get(job.method)
        if fit is None:
            return None
        if self._per_step(job) is not None:
            return sum(self._prefit_s(job, fit, n) for n in job.layers)
        return sum(law(fit, n) for n in self.layer_sizes(job).values()) * self._budget_factor(job, fit)

    def _budget_factor(self, job, fit: dict[str, Any]) -> float:
        """(calibrated ratio / the job's ratio) ** the method's ``factorize_cost_exponent``: the
        law was measured at one budget (``fit['budget']``, e.g. 'x32'); CP at 2,192x does a
        sixtieth of its 32x work. 1 for a fixed knob or a law without its budget."""
        exponent = float(getattr(self._method(job), "factorize_cost_exponent", 0.0))
        measured = str(fit.get("budget", ""))
        if not exponent or job.target_ratio is None or not measured.startswith("x"):
            return 1.0
        try:
            return (float(measured[1:]) / float(job.target_ratio)) ** exponent
        except ValueError:
            return 1.0

    def trials(self, job, tuning: bool) -> int:
        """Fine-tuning runs of a job (``bench.tuning``): on the tuning seed of a method that
        tunes its lr, every optimizer of ``optimizer_grid`` (absent: the recipe's one) times
        every lr of ``lr_grid``; else 1. ``lr_extend`` E adds up to E runs per optimizer whose
        pick is at an edge, counted as E: the committed tuning records at E = 2 with two
        optimizers ran 1.54 extensions on average (26 records; 0-3 each)."""
        from bench.registry import get_method

        if not (tuning and job.lr_grid and get_method(job.method, **job.options).uses_finetune_lr):
            return 1
        return len(job.optimizer_grid or [None]) * len(job.lr_grid) + int(job.lr_extend or 0)

    def finetune_s(self, job, tuning: bool) -> float:
        """Fine-tuning (every trial on the tuning seed, and the val pass that judges each)."""
        if job.reference or job.fit_only:
            return 0.0  # dense: reported as trained; fit-only: never fine-tuned
        share = self.suffix_share(job)
        trials = self.trials(job, tuning)
        per_trial = sum(self._train_run_s(job, job.finetune, epochs, share) + self._generation_s(job, epochs, gen)
                        for epochs, gen in self._runs(job)) + self._refit_s(job)
        judged = self.eval_s(job.network, split_sizes(job)[1], None, share) if trials > 1 else 0.0
        return trials * (per_trial + judged)

    def evals_s(self, job) -> float:
        """What a job does outside its stages (``bench.job.run_job``): test before and after
        fine-tuning and val after it, in the default precision on the suffix; bias
        calibration's extra passes (fp32); the per-job overhead (copies, FLOP counts)."""
        overhead = float(self.cal.get("job_overhead_s", {}).get(job.network, 0.0))
        if job.fit_only:
            return overhead
        from bench.bias_calibration import CALIBRATION_IMAGES

        n_train, n_val, n_test = split_sizes(job)
        share = self.suffix_share(job)
        t = self.eval_s(job.network, 2 * n_test + n_val, None, share)
        if job.calibrates_bias:  # test and val again; dense once, each layer up to 4 times (output, weight
            # term, after a lift, after the shift: bench.bias_calibration)
            t += self.eval_s(job.network, n_test + 2 * n_val, None, share)
            t += self.eval_s(job.network, (1 + 4 * len(job.layers)) * min(CALIBRATION_IMAGES, n_train), "fp32", share)
        return t + overhead

    def stages(self, job, tuning: bool, with_baseline: bool = False, with_cache: bool = False) -> dict[str, float]:
        """Seconds per stage (``STAGES``); ``with_baseline`` / ``with_cache``: this job pays for
        its group's baseline / frozen-prefix cache. Compare with a record: ``record_stages``."""
        return {"baseline": self.baseline_s(job) if with_baseline else 0.0,
                "cache": self.cache_s(job) if with_cache else 0.0,
                "factorize": self.factorize_s(job) or 0.0,
                "finetune": self.finetune_s(job, tuning),
                "eval": self.evals_s(job)}

    def job_s(self, job, tuning: bool, with_baseline: bool = False, with_cache: bool = False) -> float:
        """Whole job: the sum of its ``stages``."""
        return sum(self.stages(job, tuning, with_baseline, with_cache).values())

    def suite_stages(self, jobs: list, cached: set[str] = frozenset(),
                     skipped: set[str] = frozenset()) -> dict[str, dict[str, float]]:
        """Seconds per stage of each job of a list, as one sweep spends them: each baseline once,
        on the first job of its group (none for baseline keys in ``cached``); each frozen-prefix
        cache once per group, on its first job that runs (never kept between runs); jobs in
        ``skipped`` (recorded skipped before they run) nothing else; the tuning seed's trials.
        The dry run prints these; ``suite_s`` sums them."""
        from bench.plan import tuner_keys

        tuners = tuner_keys(jobs)
        seen, caches, out = set(cached), set(), {}
        for j in jobs:
            skip = j.key in skipped
            st = dict.fromkeys(STAGES, 0.0) if skip else self.stages(j, j.key in tuners)
            if j.baseline_key not in seen:
                seen.add(j.baseline_key)
                st["baseline"] = self.baseline_s(j)
            ckey = cache_group(j)
            if not skip and ckey is not None and ckey not in caches:
                caches.add(ckey)
                st["cache"] = self.cache_s(j)
            out[j.key] = st
        return out

    def suite_s(self, jobs: list, cached: set[str] = frozenset()) -> tuple[float, dict[str, float]]:
        """(total seconds, seconds per job key) of ``suite_stages``."""
        per_job = {k: sum(st.values()) for k, st in self.suite_stages(jobs, cached).items()}
        return sum(per_job.values()), per_job

    # --- per-step methods (ADTN): the method says its work (Compressor.step_work) --------------
    def _method(self, job):
        from bench.registry import get_method

        return get_method(job.method, **job.options)

    def _per_step(self, job) -> dict[str, Any] | None:
        """The calibration's per-step law of the job's method, or None (also when the method,
        e.g. a plugin under a calibrated name, does not say its ``step_work``)."""
        from bench.compressor import Compressor
        from bench.registry import METHODS

        fit = (self.cal.get("factorize") or {}).get(job.method)
        if not (fit and fit.get("per_step")):
            return None
        return fit if METHODS.get(job.method).step_work is not Compressor.step_work else None  # the class: no build

    def _work(self, job, fit: dict[str, Any]) -> dict[str, tuple[StepWork, float]]:
        """Each layer's ``StepWork`` at the job's knob (a fixed one, or the method's allocation on
        the meta network: a per-step method's needs no trained weights) and its passes relative
        to those at the knob the calibration measured (``fit['depth']``; absent in old files: 1x).
        Computed once per job: it is asked per layer per stage and per Budget check."""
        key = (job.key, fit.get("depth"))
        if key not in self._works:
            from bench.layers import get_layer
            from bench.suite_check import meta_network

            m, model = self._method(job), meta_network(job.network, job.dataset)
            layers = {n: get_layer(model, n) for n in job.layers}
            knobs = ({n: job.knob for n in layers} if job.knob is not None
                     else m.allocate(layers, job.target_ratio))
            works = {}
            for n, layer in layers.items():
                w = m.step_work(layer, knobs[n])
                factor = w.passes / m.step_work(layer, fit["depth"]).passes if fit.get("depth") else 1.0
                works[n] = (w, factor)
            self._works[key] = works
        return self._works[key]

    def step_s(self, job, fit: dict[str, Any], name: str) -> float:
        """One step of layer ``name`` (a pre-fit step, or a weight generation in training): the
        law at the method's size, times its passes over the calibrated knob's."""
        work, factor = self._work(job, fit)[name]
        return law(fit, work.size) * factor

    def _prefit_s(self, job, fit: dict[str, Any], name: str) -> float:
        start = fit.get("start") or {"a": 0.0, "b": 1.0}
        work, _ = self._work(job, fit)[name]
        return law(start, work.size) + work.prefit_steps * self.step_s(job, fit, name)

    def _staged(self, job) -> list[str] | None:
        """The layers in the order a staged per-step method replaces them (``stage_order``), or
        None when it replaces all at once or has no per-step law."""
        if self._per_step(job) is None:
            return None
        from bench.suite_check import meta_network

        position = {n: i for i, (n, _) in enumerate(meta_network(job.network, job.dataset).named_modules())}
        return self._method(job).stage_order(sorted(job.layers, key=lambda n: position.get(n, len(position))))

    def _runs(self, job) -> list[tuple[float, list[str]]]:
        """(epochs, generated layers) of each training run of one trial: one run of the recipe,
        or the stages (the epochs split evenly, stage k generating the first k + 1 layers)."""
        epochs = float(job.finetune["epochs"])
        seq = self._staged(job)
        if seq is None:
            return [(epochs, list(job.layers) if self._per_step(job) else [])]
        return [(epochs / len(seq), seq[:k + 1]) for k in range(len(seq))]

    def _generation_s(self, job, epochs: float, layers: list[str]) -> float:
        """A per-step method generates each of ``layers``' weights every training step."""
        fit = self._per_step(job)
        if fit is None or not layers:
            return 0.0
        steps, _ = train_steps(epochs, split_sizes(job)[0], int(job.finetune["batch_size"]))
        return steps * sum(self.step_s(job, fit, n) for n in layers)

    def _refit_s(self, job) -> float:
        """A staged order compresses every layer after the first again, in each trial."""
        seq = self._staged(job)
        if seq is None:
            return 0.0
        fit = self._per_step(job)
        return sum(self._prefit_s(job, fit, n) for n in seq[1:])


def record_stages(record: dict[str, Any], baseline_meta: dict[str, Any] | None = None) -> dict[str, float]:
    """A record's measured seconds per stage, to set beside ``CostModel.stages``: cache, factorize
    and finetune as timed, eval the rest of ``time_total_s``; baseline from the checkpoint's
    summary (``baseline_meta``) when given."""
    cache = float(record.get("time_prefix_cache_s") or 0.0)
    fact = float(record.get("time_compress_s") or 0.0)
    fine = float(record.get("time_finetune_s") or 0.0)
    total = float(record.get("time_total_s") or 0.0)
    return {"baseline": float((baseline_meta or {}).get("time_train_s") or 0.0), "cache": cache,
            "factorize": fact, "finetune": fine, "eval": max(0.0, total - cache - fact - fine)}


def compare_records(model: CostModel, jobs: list, records: dict[str, dict], baseline_root: Path
                    ) -> tuple[int, dict[str, float], dict[str, float]]:
    """(jobs compared, estimated and measured seconds per stage) over the jobs with an ok
    record measured by themselves (not ``same_as`` or ``reused_from``), each estimated as it
    ran: tuned when its record tuned, the cache when it built one; baselines whose checkpoint
    summary is under ``baseline_root`` once each."""
    from bench.baseline import checkpoint_path

    est, got = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    n, bases = 0, set()
    for j in jobs:
        rec = records.get(j.key)
        if not rec or rec.get("status") != "ok" or rec.get("same_as") or rec.get("reused_from"):
            continue
        n += 1
        tuned = bool((rec.get("lr_tuning") or {}).get("tuned_here"))
        for stage, t in model.stages(j, tuned, with_cache=(rec.get("time_prefix_cache_s") or 0) > 0).items():
            est[stage] += t
        for stage, t in record_stages(rec).items():
            got[stage] += t
        meta = checkpoint_path(baseline_root, j.baseline_config).with_suffix(".json")
        if j.baseline_key not in bases and meta.is_file():
            bases.add(j.baseline_key)
            est["baseline"] += model.baseline_s(j)
            got["baseline"] += record_stages({}, json.loads(meta.read_text()))["baseline"]
    return n, est, got


def baseline_cached(root: Path, job) -> bool:
    """Whether ``job``'s dense baseline is already trained under ``root`` (checkpoint pair)."""
    from bench.baseline import checkpoint_path

    pt = checkpoint_path(root, job.baseline_config)
    return pt.is_file() and pt.with_suffix(".json").is_file()


class Budget:
    """``--time-budget``: admits a job only if the cost model says it finishes in the time
    left. Remaining time is measured on ``CLOCK`` from construction; a job whose dense
    baseline is neither cached nor trained yet in this run pays for it, and a scoped job whose
    group's frozen-prefix cache is not built yet in this run pays for that (once each).
    Picklable, so worker processes carry a copy (each tracks its own baselines and caches)."""

    def __init__(self, seconds: float, model: CostModel, jobs: list, baseline_root: Path | None = None):
        from bench.plan import tuner_keys

        self.seconds, self.model = float(seconds), model
        self.start = CLOCK()
        self.tuners = tuner_keys(jobs)
        self.baseline_root = Path(baseline_root) if baseline_root is not None else None
        self.paid: set[str] = set()
        self.caches: set[tuple] = set()

    def remaining(self) -> float:
        return self.seconds - (CLOCK() - self.start)

    def estimate(self, job) -> float:
        bkey, ckey = job.baseline_key, cache_group(job)
        unpaid = bkey not in self.paid and not (self.baseline_root is not None
                                                and baseline_cached(self.baseline_root, job))
        return self.model.job_s(job, job.key in self.tuners, with_baseline=unpaid,
                                with_cache=ckey is not None and ckey not in self.caches)

    def __call__(self, job) -> bool:
        """True: start ``job`` now (its baseline and cache are then paid for)."""
        if self.estimate(job) > self.remaining():
            return False
        self.paid.add(job.baseline_key)
        if cache_group(job) is not None:
            self.caches.add(cache_group(job))
        return True
