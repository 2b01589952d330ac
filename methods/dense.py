"""``dense``: the uncompressed reference row of every table (no change, no fine-tuning)."""
from __future__ import annotations

import copy

from torch import nn

from bench.compressor import Compressor, FinetuneContext, dense_params
from bench.registry import register_method


@register_method("dense")
class Dense(Compressor):
    reference = True  # the row the tables compare every method with
    knob_name = "size"
    allocation_uses_weights = False  # "full" everywhere
    uses_finetune_lr = False  # not fine-tuned at all
    finetunes = False

    def knobs(self, layer: nn.Module) -> list:
        return ["full"]

    def layer_params(self, layer: nn.Module, knob=None) -> int:
        return dense_params(layer)

    def factorize(self, layer: nn.Module, knob=None) -> nn.Module:
        return copy.deepcopy(layer)

    def allocate(self, layers, target_ratio):
        return {name: "full" for name in layers}

    def finetune(self, model: nn.Module, ctx: FinetuneContext) -> None:
        """The dense row reports the trained baseline as it is."""
