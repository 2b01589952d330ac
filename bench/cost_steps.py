"""The cost of per-step methods (ADTN): pre-fit steps, weight generation in every training step
and the re-fits of a staged order, from what the method says of its own work
(``Compressor.step_work`` / ``stage_order``) and the calibration's per-step law.

Why a module of its own (issue #22): this is the one part of the cost model that asks a
method about its work (cost.py holds no ADTN knowledge). ``bench.cost_model.CostModel`` takes
it in as a mixin; these methods read its calibration ``cal`` and fill its ``_works`` cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.cost_calibration import law
from bench.cost_job import split_sizes, train_steps

if TYPE_CHECKING:  # bench.compressor imports torch: the dry run's planning imports it when it needs it
    from bench.compressor import StepWork


class PerStepCosts:
    """``CostModel``'s seconds of per-step methods: the method says its work (``Compressor.step_work``)."""

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
            from bench.meta_network import meta_network

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
        from bench.meta_network import meta_network

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
