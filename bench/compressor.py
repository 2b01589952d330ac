"""The compressor interface: the contract every method in ``methods/`` implements.

A method is a ``Compressor`` subclass registered with ``@register_method("name")``.
It must provide

* ``knobs(layer)``: the admissible values of its size knob for that layer (rank, TT rank,
  ADTN depth, ...), ordered by increasing parameter count;
* ``layer_params(layer, knob)``: the exact parameter count of its replacement, bias included;
* ``factorize(layer, knob)``: the drop-in replacement, initialised from the layer's weights.

It may override ``allocate`` (budget -> knob per layer; ALDS does), ``finetune`` (NN-BCD
trains without gradients; ADTN compresses layer by layer) and ``skip_reason`` (a method that
does not apply to a network says why, and the runner records the job as skipped).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from bench.allocation import ALLOCATIONS, minmax_error, spectral_error, uniform_ratio
from bench.layers import (COMPRESSIBLE, CompressionError, FactorizedLayer, count_params,  # noqa: F401 (public)
                          dense_params, effective_weight, get_layer, replace_layer)


class BudgetUnreachable(CompressionError):
    """The budget is below anything this method can build (e.g. pruning below the dense
    biases); the runner records the job as ``skipped`` with the message."""


class ContractError(CompressionError):
    """A method broke the compressor contract (e.g. its module holds more parameters than its
    ``layer_params`` said); the job fails instead of recording a wrong size."""


@dataclass
class FinetuneContext:
    """What a method's ``finetune`` gets from the runner.

    ``train(model, epochs=None)`` runs the suite's fine-tuning recipe (model selection on the
    validation split included); ``extras`` is merged into the job's record. ``data`` holds the
    training and validation splits only (``bench.data.TrainValSplits``): the test set is read
    by the runner alone, for the reported accuracies. ``calibrate(model, names)`` applies the
    recipe's bias calibration (``bench.bias_calibration``; a no-op returning None when the
    recipe has none) to layers a method replaces during fine-tuning (ADTN's staged orders), so
    they start as every compressed layer does.
    """

    train: Callable[..., None]
    epochs: float
    layer_names: list[str]
    dense_layers: dict[str, nn.Module]
    knobs: dict[str, Any]
    method: "Compressor"
    data: Any
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)
    calibrate: Callable[[nn.Module, list[str]], Any] = lambda model, names: None


@dataclass(frozen=True)
class StepWork:
    """One layer's work under a per-step method (``Compressor.step_work``): the calibration's
    per-step law is read at ``size``, scaled by ``passes`` (over the passes at the knob it was
    measured at), and compressing the layer takes ``prefit_steps`` such steps."""

    size: int
    passes: int
    prefit_steps: float


class Compressor:
    """Base class of every method. Subclasses take their options as keyword arguments."""

    name: str = "?"
    knob_name: str = "rank"
    #: what ``params`` counts; pruning counts non-zero weights and says so in the records
    params_counted_as: str = "parameters"
    #: True when ``allocate`` depends on the trained weights (ALDS, global pruning): dry runs and
    #: Ray's reuse of identical allocations then do not plan it on untrained weights. Unless a
    #: subclass sets it, it is True exactly when the subclass overrides ``allocate`` (the safe
    #: default: a weight-dependent allocation planned on random weights would be wrong).
    allocation_uses_weights: bool = False
    #: whether ``finetune`` trains with the suite's learning rate (``ctx.train``): only then is
    #: that rate tuned on the suite's ``lr_grid``; NN-BCD (gradient-free) and dense say False
    uses_finetune_lr: bool = True
    #: whether the result depends on the fine-tuning epoch count (``finetune.epochs``): NN-BCD's
    #: sweeps stop by their own rule and say False, so jobs that differ only in that count are
    #: one measurement, run once and copied (``bench.jobs.measured_recipe``, ``same_as``)
    uses_finetune_epochs: bool = True
    #: a cost hint (``bench.cost``): factorisation time scales as (calibrated ratio / job's ratio)
    #: to this power at one layer size. 0: the work does not depend on the size asked for (a full
    #: SVD, TT-SVD, HOSVD, a magnitude sort); CP's ALS says 1 (each sweep's work is linear in the rank)
    factorize_cost_exponent: float = 0.0
    #: whether ``finetune`` changes the model at all: dense says False, so its job builds no
    #: frozen-prefix cache (the first job that trains builds it) and is evaluated as it is
    finetunes: bool = True
    #: the uncompressed row every table measures against (dense): one job per seed at ratio 1,
    #: no compression, fine-tuning or bias calibration, never skipped, and kept out of the
    #: methods' rankings. Read by name through ``bench.registry.is_reference``
    reference: bool = False
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "allocate" in cls.__dict__ and "allocation_uses_weights" not in cls.__dict__:
            cls.allocation_uses_weights = True

    def __init__(self, allocation: str = "uniform", **options: Any):
        if options:
            raise TypeError(f"method {self.name!r} takes no options {sorted(options)}")
        if allocation not in ALLOCATIONS:
            raise ValueError(f"method {self.name!r}: allocation {allocation!r}; valid: {', '.join(ALLOCATIONS)}")
        if allocation != "uniform":
            if type(self).allocate is not Compressor.allocate:
                raise TypeError(f"method {self.name!r} allocates its budget by its own rule and takes no "
                                f"allocation option")
            self.allocation = allocation
            self.allocation_uses_weights = True  # the errors are measured on the trained weights

    # --- size model -------------------------------------------------------------------
    def knobs(self, layer: nn.Module) -> list[Any]:
        raise NotImplementedError

    def layer_params(self, layer: nn.Module, knob: Any) -> int:
        raise NotImplementedError

    def factorize(self, layer: nn.Module, knob: Any) -> nn.Module:
        raise NotImplementedError

    def module_params(self, module: nn.Module) -> int:
        """Parameters of a built replacement, counted the way ``layer_params`` counts them."""
        return count_params(module)

    # --- budget -> knobs ------------------------------------------------------------------
    #: how ``allocate`` splits the budget across layers (``bench.allocation``); an option
    allocation: str = "uniform"
    #: whether ``knob_error`` is cheap enough to score every knob (a closed form, as svd's)
    knob_error_is_cheap: bool = False

    def allocate(self, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, Any]:
        """Knobs for every layer at about dense/target_ratio parameters in all, split by the
        method's ``allocation`` rule: ``uniform`` (every layer at about the same ratio) or
        ``minmax`` (the largest per-layer ``knob_error`` as small as the budget allows)."""
        if not target_ratio > 0:
            raise CompressionError(f"target ratio must be positive, got {target_ratio}")
        if self.allocation == "minmax":
            return minmax_error(self, layers, target_ratio)
        return uniform_ratio(self, layers, target_ratio)

    def knob_error(self, layer: nn.Module, knob: Any) -> float:
        """Relative spectral error of the replacement ``knob`` builds (``minmax``'s score)."""
        return spectral_error(layer, effective_weight(self.factorize(layer, knob)))

    # --- compress and fine-tune -------------------------------------------------------------
    def compress(self, model: nn.Module, knobs: dict[str, Any]) -> dict[str, dict]:
        """Replace each named layer in place; returns per-layer info for the record."""
        info = {}
        for name, knob in knobs.items():
            layer = get_layer(model, name)
            new = self.factorize(layer, knob)
            replace_layer(model, name, new)
            info[name] = dict(getattr(new, "tnbench_info", {}))
        return info

    def skeleton(self, layer: nn.Module, knob: Any) -> nn.Module | None:
        """The module ``factorize(layer, knob)`` returns, built without fitting it (cheap), for a
        kept start's weights (``load_state_dict``) and ``tnbench_info`` to be loaded into
        (``bench.start_store``). None, the default: the method's starts are not kept. Override
        it only where compression is slow and ``finetune`` reads nothing ``compress`` sets on
        the method object (a loaded start skips ``compress``)."""
        return None

    @property
    def caches_start(self) -> bool:
        """Whether a sweep keeps this method's compressed starts (it overrides ``skeleton``)."""
        return type(self).skeleton is not Compressor.skeleton

    def finetune(self, model: nn.Module, ctx: FinetuneContext) -> None:
        """Default: the suite's gradient fine-tuning recipe."""
        ctx.train(model)

    def skip_reason(self, model: nn.Module, layer_names: list[str]) -> str | None:
        """A reason to record the job as skipped (method not applicable), else None."""
        return None

    # --- cost hints (bench.cost): what the method knows about its own time ------------------------
    def step_work(self, layer: nn.Module, knob: Any) -> StepWork | None:
        """A method whose compression and training loop over a generated weight (ADTN) says what
        one step works on, so the calibration's per-step law can cost it. None (the default):
        the factorisation is costed by its law in the layer's weights, training at the dense
        network's speed."""
        return None

    def finetune_cost_scale(self) -> float:
        """How much longer than the method's default options this method object's training
        takes (1.0: the same). The calibration's corrections are fitted on records of the
        defaults; a method whose options change its training length by a known factor (NN-BCD's
        ``max_sweeps`` with the plateau rule off) says so here, so a dry run of a new option
        is not costed as the default."""
        return 1.0

    def stage_order(self, names: list[str]) -> list[str] | None:
        """The layers (given in forward order) in the order a staged ``finetune`` compresses and
        trains them one more at a time (ADTN's ``order``); None: all at once."""
        return None
