"""The cost model proper: seconds of each stage of a job, and of a list of jobs as a sweep
spends them, on a calibrated device (``bench.cost_calibration``).

Why a module of its own (issue #22): the estimates per job and per suite are one piece of
accounting; the calibration file, the job's shape (``bench.cost_job``), the per-step
methods' work (``bench.cost_steps``), the comparison with records (``bench.cost_records``)
and the time budget (``bench.cost``) live apart. The model, stage by stage (``stages``,
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
What these approximations miss on a machine, its records measure: each stage is multiplied by
the calibration's fitted ``corrections`` (``bench.cost_corrections``; ``factor``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.cost_calibration import DEFAULT_STEP_FLOOR_S, law
from bench.cost_corrections import cell, factor, for_network, ranked
from bench.cost_job import augments, cache_group, scoped, split_sizes, train_steps
from bench.cost_steps import PerStepCosts

if TYPE_CHECKING:  # bench.compressor imports torch: the dry run's planning imports it when it needs it
    from bench.compressor import StepWork


def _cpu() -> str:
    from bench.environment import cpu_model  # imports torch: only when a model is corrected

    return cpu_model()


def _cpu_id() -> str:
    from bench.environment import cpu_id

    return cpu_id()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


#: the stages of a job's time (``CostModel.stages``), in the order they run
STAGES = ("baseline", "cache", "factorize", "finetune", "eval")


class CostModel(PerStepCosts):
    """Seconds of a job (and of its dense baseline) on the calibrated device."""

    def __init__(self, calibration: dict[str, Any], corrected: bool = True, cpu: str | None = None,
                 threads: int | None = None, cpu_id: str | None = None):
        """``corrected``: apply the calibration's fitted corrections (``bench.cost_corrections``),
        the set of processor ``cpu`` of kind ``cpu_id`` with ``threads`` (default: this machine's,
        the threads this process trains with; a ``cpu`` given without ``cpu_id``: any kind of
        it); False gives the bare model they are fitted against."""
        self.cal = calibration
        self.cpu, self.threads = (cpu or _cpu(), threads or _threads()) if corrected else (cpu, threads)
        self.cpu_id = cpu_id or (_cpu_id() if corrected and cpu is None else None)
        self.correction_sets = ranked(calibration, self.cpu, self.threads, self.cpu_id) if corrected else []
        self.path = calibration.get("path", "?")
        self._layers: dict[tuple, dict[str, int]] = {}
        self._works: dict[tuple, dict[str, tuple[StepWork, float]]] = {}  # (job key, calibrated knob)
        self._cuts: dict[tuple, tuple[str, float]] = {}
        self._cells: dict[str, str] = {}  # job key -> its cell (``bench.cost_corrections.cell``)

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

    def factor(self, job, stage: str) -> float:
        """The fitted correction of ``stage`` for ``job``'s network and method (1 without one)."""
        chosen = for_network(self.correction_sets, job.network)
        corrections = chosen["corrections"] if chosen else None
        if stage == "baseline":
            return factor(corrections, job.network, stage, None)
        if corrections and job.key not in self._cells:  # a hash of the job's config: once per job
            self._cells[job.key] = cell(job)
        return factor(corrections, job.network, stage, job.method, self._cells.get(job.key))

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
        bare = self._train_run_s(job, job.train, float(job.train["epochs"]), 1.0) + self.eval_s(job.network, n_test)
        return bare * self.factor(job, "baseline")

    def cache_s(self, job) -> float:
        """Building a scoped job's frozen-prefix cache (``bench.prefix.build_cache``): the
        prefix on every training view in the fine-tuning precision (one view where the
        dataset does not augment), on val and test in the default one. 0 for other jobs."""
        if not scoped(job):
            return 0.0
        n_train, n_val, n_test = split_sizes(job)
        views = int(job.finetune.get("cache_views", 4)) if augments(job.dataset) else 1
        prefix = 1.0 - self.cut(job)[1]
        return self.factor(job, "cache") * (self.eval_s(job.network, views * n_train, job.finetune.get("precision"), prefix)
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
            bare = sum(self._prefit_s(job, fit, n) for n in job.layers)
        else:
            bare = sum(law(fit, n) for n in self.layer_sizes(job).values()) * self._budget_factor(job, fit)
        return bare * self.factor(job, "factorize")

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

    def finetune_s(self, job, tuning: bool, trials: int | None = None) -> float:
        """Fine-tuning (every trial on the tuning seed, and the val pass that judges each);
        ``trials``: the runs a record says it made (``ran_trials``) instead of ``self.trials``'s
        expectation, so that a fit on records does not read extension luck as speed."""
        if job.reference or job.fit_only:
            return 0.0  # dense: reported as trained; fit-only: never fine-tuned
        share = self.suffix_share(job)
        trials = self.trials(job, tuning) if trials is None else int(trials)
        per_trial = (sum(self._train_run_s(job, job.finetune, epochs, share) + self._generation_s(job, epochs, gen)
                         for epochs, gen in self._runs(job)) + self._refit_s(job)) * self._method(job).finetune_cost_scale()
        judged = self.eval_s(job.network, split_sizes(job)[1], None, share) if trials > 1 else 0.0
        return trials * (per_trial + judged) * self.factor(job, "finetune")

    def trial_s(self, job) -> float:
        """One run of a tuning job's search and the val pass that judges it (``--time-budget``
        asks for room for one before each: ``bench.cost.Budget.room_for_trial``)."""
        return self.finetune_s(job, True, trials=2) / 2

    def evals_s(self, job) -> float:
        """What a job does outside its stages (``bench.job.run_job``): test before and after
        fine-tuning and val after it, in the default precision on the suffix; bias
        calibration's extra passes (fp32); the per-job overhead (copies, FLOP counts)."""
        overhead = float(self.cal.get("job_overhead_s", {}).get(job.network, 0.0))
        if job.fit_only:
            return overhead * self.factor(job, "eval")
        from bench.bias_calibration import CALIBRATION_IMAGES

        n_train, n_val, n_test = split_sizes(job)
        share = self.suffix_share(job)
        t = self.eval_s(job.network, 2 * n_test + n_val, None, share)
        if job.calibrates_bias:  # test and val again; dense once, each layer up to 4 times (output, weight
            # term, after a lift, after the shift: bench.bias_calibration)
            t += self.eval_s(job.network, n_test + 2 * n_val, None, share)
            t += self.eval_s(job.network, (1 + 4 * len(job.layers)) * min(CALIBRATION_IMAGES, n_train), "fp32", share)
        return (t + overhead) * self.factor(job, "eval")

    def stages(self, job, tuning: bool, with_baseline: bool = False, with_cache: bool = False,
               trials: int | None = None) -> dict[str, float]:
        """Seconds per stage (``STAGES``); ``with_baseline`` / ``with_cache``: this job pays for
        its group's baseline / frozen-prefix cache; ``trials``: see ``finetune_s``. Compare with
        a record: ``record_stages``."""
        return {"baseline": self.baseline_s(job) if with_baseline else 0.0,
                "cache": self.cache_s(job) if with_cache else 0.0,
                "factorize": self.factorize_s(job) or 0.0,
                "finetune": self.finetune_s(job, tuning, trials),
                "eval": self.evals_s(job)}

    def job_s(self, job, tuning: bool, with_baseline: bool = False, with_cache: bool = False) -> float:
        """Whole job: the sum of its ``stages``."""
        return sum(self.stages(job, tuning, with_baseline, with_cache).values())

    def suite_stages(self, jobs: list, cached: set[str] = frozenset(),
                     skipped: set[str] = frozenset(), loaded_starts: set[str] = frozenset()
                     ) -> dict[str, dict[str, float]]:
        """Seconds per stage of each job of a list, as one sweep spends them: each baseline once,
        on the first job of its group (none for baseline keys in ``cached``); each frozen-prefix
        cache once per group, on its first job that runs (counted built even where a later run
        will load its file, ``bench.prefix_store``: an estimate that errs long); jobs in
        ``skipped`` (recorded skipped before they run) and copies of an earlier job's
        measurement (``Job.measurement_key``: NN-BCD at another epoch count) nothing else; the
        tuning seed's trials; jobs in ``loaded_starts`` no factorisation (their compressed start is
        kept by an earlier job, ``bench.start_store``). The dry run prints these; ``suite_s`` sums them."""
        from bench.plan import tuner_keys

        tuners = tuner_keys(jobs)
        seen, caches, measured, out = set(cached), set(), set(), {}
        for j in jobs:
            skip = j.key in skipped or j.measurement_key in measured
            measured.add(j.measurement_key)
            st = dict.fromkeys(STAGES, 0.0) if skip else self.stages(j, j.key in tuners)
            if j.key in loaded_starts:
                st["factorize"] = 0.0
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
