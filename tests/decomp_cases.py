"""Layer shapes and checks shared by the TT, Tucker and CP tests."""
from __future__ import annotations

import bisect

import torch
import torch.nn.functional as F
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


def check_bf16_and_batch(method, name: str, knob, batch: int) -> None:
    """The replacement built from a bfloat16 layer is bfloat16, takes any batch size and
    computes what its own effective weight does (up to bfloat16 rounding)."""
    layer = make(name, torch.bfloat16)
    f = method.factorize(layer, knob)
    assert all(p.dtype == torch.bfloat16 for p in f.parameters())
    x = sample(layer, batch, torch.bfloat16)
    y = f(x)
    assert y.dtype == torch.bfloat16 and y.shape == layer(x).shape and torch.isfinite(y).all()
    w = f.effective_weight().double()
    ref = (F.linear(x.double(), w, layer.bias.double()) if isinstance(layer, nn.Linear)
           else layer.double()._conv_forward(x.double(), w, layer.bias))
    assert rel(y, ref) < 3e-2


def check_backend_untouched_and_deterministic(method, name: str, knob) -> None:
    """Factorising leaves tensorly's backend and torch's global RNG alone and repeats exactly."""
    import tensorly as tl

    layer, conv = make(name), make("conv 3ch 3x3 s2 p1")
    before, rng = tl.get_backend(), torch.get_rng_state()
    method.factorize(conv, 2)  # factor modules are built without random init: the global RNG is untouched
    assert torch.equal(torch.get_rng_state(), rng)
    a, b = method.factorize(layer, knob), method.factorize(layer, knob)
    assert tl.get_backend() == before
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


#: target ratios of the allocation tests, up to 1000x
RATIOS = [2, 3, 5, 8, 16, 30, 64, 100, 250, 500, 1000]


def fc2_layers(bias: bool) -> dict[str, nn.Module]:
    return {"fc1": nn.Linear(784, 256, bias=bias), "fc2": nn.Linear(256, 10, bias=bias)}


def check_grid_reaches_1000(method, layers: dict) -> None:
    """The knob grid spans beyond 1000x down to the lossless size. Dense biases alone (266)
    exceed 1/1000 of FC-2, so the reach is checked on layers without biases."""
    grid = uniform_totals(method, layers)
    dense = sum(dense_params(l) for l in layers.values())
    assert dense / grid[0] > 1000 and grid[-1] >= dense
