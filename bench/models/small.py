"""The MNIST-scale networks of the ADTN paper (FC-2, LeNet-5) and a tiny CNN for the
embedded 8x8 digits. Layer names are what suites list as the layers to compress."""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.registry import register_network


class FC2(nn.Module):
    """FC-2: flatten -> 256 -> ReLU -> classes (784-256-10 on MNIST)."""

    def __init__(self, input_shape, num_classes: int, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class LeNet5(nn.Module):
    """LeNet-5 (as the ADTN paper, arXiv 2305.06058, uses it): conv5x5 1->6 same, pool; conv5x5 6->16, pool; conv5x5 16->120;
    fc 120->84; fc 84->classes. ReLU activations, max pooling."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        side = ((h // 2) - 4) // 2 - 4
        if side < 1:
            raise ValueError(f"lenet5 needs inputs of at least 28x28, got {h}x{w}")
        self.fc1 = nn.Linear(120 * side * side, 84)
        self.fc2 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class DigitNet(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 convs with pooling, then a 128-64-classes head."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * (h // 4) * (w // 4), 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


register_network("fc2")(FC2)
register_network("lenet5")(LeNet5)
register_network("digitnet")(DigitNet)
