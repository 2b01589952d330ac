"""Network registry. ``build_network(name, input_shape, num_classes)`` builds a fresh model."""
from __future__ import annotations

from torch import nn

from bench.registry import NETWORKS
from bench.models import small  # noqa: F401  (registers fc2, lenet5, digitnet)
from bench.models import cifar  # noqa: F401


def build_network(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return NETWORKS.get(name)(input_shape=tuple(input_shape), num_classes=num_classes)
