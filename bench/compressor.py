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

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

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
    #: whether ``finetune`` changes the model at all: dense says False, so its job builds no
    #: frozen-prefix cache (the first job that trains builds it) and is evaluated as it is
    finetunes: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "allocate" in cls.__dict__ and "allocation_uses_weights" not in cls.__dict__:
            cls.allocation_uses_weights = True

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"method {self.name!r} takes no options {sorted(options)}")

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
    def allocate(self, layers: dict[str, nn.Module], target_ratio: float) -> dict[str, Any]:
        """Knobs whose total parameter count is as close (in log) to dense/target_ratio as the
        grid allows, compressing all layers by about the same ratio.

        Scans a fine log-grid of per-layer ratios; for each, every layer takes its largest
        knob that fits dense/ratio (or its smallest knob when none fits).
        """
        if target_ratio <= 0:
            raise CompressionError(f"target ratio must be positive, got {target_ratio}")
        grids = {}
        for name, layer in layers.items():
            ks = list(self.knobs(layer))
            if not ks:
                raise CompressionError(f"{self.name}: no admissible knob for layer {name}")
            ps = [self.layer_params(layer, k) for k in ks]
            order = sorted(range(len(ks)), key=lambda i: ps[i])
            grids[name] = ([ps[i] for i in order], [ks[i] for i in order], dense_params(layer))
        target = sum(g[2] for g in grids.values()) / target_ratio

        def pick(rho: float) -> dict[str, int]:
            chosen = {}
            for name, (ps, _, dense) in grids.items():
                i = bisect.bisect_right(ps, dense / rho) - 1
                chosen[name] = max(i, 0)
            return chosen

        best, best_err = None, math.inf
        for step in range(-400, 401):
            rho = target_ratio * 2.0 ** (step / 40)
            idx = pick(rho)
            total = sum(grids[n][0][i] for n, i in idx.items())
            err = abs(math.log(total / target))
            if err < best_err - 1e-12:
                best, best_err = idx, err
        return {name: grids[name][1][i] for name, i in best.items()}

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

    def finetune(self, model: nn.Module, ctx: FinetuneContext) -> None:
        """Default: the suite's gradient fine-tuning recipe."""
        ctx.train(model)

    def skip_reason(self, model: nn.Module, layer_names: list[str]) -> str | None:
        """A reason to record the job as skipped (method not applicable), else None."""
        return None
