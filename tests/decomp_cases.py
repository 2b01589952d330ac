"""Layer shapes and checks shared by the TT, Tucker and CP tests."""
from __future__ import annotations

import bisect

import torch
from torch import nn

from bench.compressor import dense_params


LAYERS = {
    "784->256": lambda: nn.Linear(784, 256),
    "120->84": lambda: nn.Linear(120, 84),
    "84->10": lambda: nn.Linear(84, 10),
    "256->10": lambda: nn.Linear(256, 10),
    "13->7 primes": lambda: nn.Linear(13, 7),
    "no bias": lambda: nn.Linear(96, 40, bias=False),
    "conv 1ch 5x5 pad2": lambda: nn.Conv2d(1, 6, 5, padding=2),
    "conv 6->16 5x5": lambda: nn.Conv2d(6, 16, 5),
    "conv 3ch 3x3 s2 p1": lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1),
    "conv dilated same": lambda: nn.Conv2d(4, 6, (3, 5), padding="same", dilation=2, bias=False),
    "conv reflect": lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
}


def make(name: str, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return LAYERS[name]().to(dtype)


def sample(layer: nn.Module, batch: int, dtype=torch.float64) -> torch.Tensor:
    shape = (layer.in_features,) if isinstance(layer, nn.Linear) else (layer.in_channels, 11, 9)
    return torch.randn(batch, *shape, dtype=dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def uniform_totals(method, layers: dict) -> list[int]:
    """Every total the default allocator can produce (all layers at the largest knob under a
    common per-layer ratio; the choice only changes at ratios dense_L / p)."""
    grids = {n: sorted(method.layer_params(l, k) for k in method.knobs(l)) for n, l in layers.items()}
    dense = {n: dense_params(l) for n, l in layers.items()}
    totals = set()
    for rho in {dense[n] / p for n, g in grids.items() for p in g}:
        totals.add(sum(g[max(bisect.bisect_right(g, dense[n] / rho) - 1, 0)] for n, g in grids.items()))
    return sorted(totals)


def check_allocation(method, layers: dict, ratios, max_step: float) -> None:
    """Achieved params are within one grid step of the target, the grid is fine (consecutive
    totals within ``max_step``), and beyond its end the smallest knobs are used."""
    grid = uniform_totals(method, layers)
    dense = sum(dense_params(l) for l in layers.values())
    for ratio in ratios:
        knobs = method.allocate(layers, ratio)
        total = sum(method.layer_params(l, knobs[n]) for n, l in layers.items())
        target = dense / ratio
        if target <= grid[0]:
            assert total == grid[0], (ratio, total, grid[0])
            continue
        i = bisect.bisect_right(grid, target) - 1
        lo, hi = grid[i], grid[min(i + 1, len(grid) - 1)]
        # within one grid step of the target, or of the allocator's own ratio scan step (2^(1/40))
        # where the knob grid is finer than that scan
        assert max(total / target, target / total) <= max(hi / lo, 2 ** (1 / 40)), (ratio, lo, total, hi)
        assert hi / lo <= max_step, (ratio, lo, hi)
