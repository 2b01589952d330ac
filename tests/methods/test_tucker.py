"""``tucker`` (Tucker-2 convs, full Tucker of reshaped Linears): size model, rank levels,
HOSVD initialisation, lossless top level, geometry, dtypes, allocation."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import CompressionError
from bench.registry import get_method
from methods.tucker import rank_levels
from tests.decomp_cases import (LAYERS, RATIOS, check_allocation, check_backend_untouched_and_deterministic,
                                 check_bf16_and_batch, check_grid_reaches_1000, fc2_layers, make, rel, sample)



# --- rank levels --------------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", [(16, 16, 28, 28), (16, 6), (6, 1), (5, 2, 16, 16), (7,)])
def test_rank_levels_grow_one_rank_at_a_time_uniformly(bounds):
    levels = rank_levels(bounds)
    assert levels[0] == (1,) * len(bounds) and levels[-1] == bounds
    assert len(levels) == 1 + sum(b - 1 for b in bounds)
    for prev, cur in zip(levels, levels[1:]):
        assert sorted(c - p for c, p in zip(cur, prev)) == [0] * (len(bounds) - 1) + [1]
    for ranks in levels:  # no mode runs ahead: (r_j - 1) / b_j <= r_k / b_k for every unfinished k
        for k, (rk, bk) in enumerate(zip(ranks, bounds)):
            if rk < bk:
                assert all(Fraction(rj - 1, bj) <= Fraction(rk, bk) for rj, bj in zip(ranks, bounds))


# --- size model and lossless top knob -----------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_params_exact_and_full_rank_lossless(name):
    layer, m = make(name), get_method("tucker")
    knobs = m.knobs(layer)
    assert knobs == list(range(1, len(knobs) + 1))
    params = [m.layer_params(layer, k) for k in knobs]
    assert params == sorted(set(params))  # strictly increasing
    for k in {knobs[0], knobs[len(knobs) // 2], knobs[-1]}:
        assert m.module_params(m.factorize(layer, k)) == m.layer_params(layer, k)
    full = m.factorize(layer, knobs[-1])
    x = sample(layer, 5)
    assert rel(full(x), layer(x)) < 1e-10
    assert rel(full.effective_weight(), layer.weight) < 1e-10
    assert full.tnbench_info["clipped"] is False


def test_linear_reshape_and_clip_is_recorded():
    layer, m = make("784->256"), get_method("tucker")
    f = m.factorize(layer, 10_000)
    assert f.tnbench_info == {"requested": 10_000, "clipped": True, "ranks": [16, 16, 28, 28], "modes": [16, 16, 28, 28]}
    assert m.layer_params(layer, 10_000) == m.layer_params(layer, m.knobs(layer)[-1]) == m.module_params(f)
    small = m.factorize(layer, 5)
    assert small.tnbench_info["ranks"] == [2, 2, 2, 2]  # levels: 1111, 1121, 1122, 2122, 2222
    assert tuple(small.core.shape) == tuple(small.tnbench_info["ranks"])
    assert get_method("tucker", modes_per_side=3).factorize(layer, 1).tnbench_info["modes"] == [8, 8, 4, 14, 8, 7]
    with pytest.raises(CompressionError):
        m.factorize(layer, 0)


def test_conv_is_kim_tucker2():
    layer, m = make("conv 3ch 3x3 s2 p1"), get_method("tucker")
    f = m.factorize(layer, 4)
    r_out, r_in = f.tnbench_info["ranks"]
    assert (f.first.kernel_size, f.first.in_channels, f.first.out_channels, f.first.bias) == ((1, 1), 3, r_in, None)
    assert (f.core.kernel_size, f.core.stride, f.core.padding) == ((3, 3), (2, 2), (1, 1))
    assert (f.last.kernel_size, f.last.out_channels) == ((1, 1), 8) and torch.equal(f.last.bias, layer.bias)
    x = sample(layer, 7)
    assert torch.allclose(f(x), layer._conv_forward(x, f.effective_weight(), layer.bias), atol=1e-12)
    one = make("conv 1ch 5x5 pad2")
    assert m.factorize(one, m.knobs(one)[-1]).tnbench_info["ranks"] == [6, 1]  # rank of a 1-channel mode is 1


def test_init_is_hosvd_and_hooi_does_not_hurt():
    layer, m = make("120->84"), get_method("tucker", n_iter_max=0)
    f = m.factorize(layer, 12)
    w = layer.weight.detach().reshape(f.tnbench_info["modes"])
    for k, u in enumerate(list(f.out_factors) + list(f.in_factors)):
        uk, _, _ = torch.linalg.svd(w.movedim(k, 0).reshape(w.shape[k], -1), full_matrices=False)
        r = u.shape[1]
        assert torch.allclose(u @ u.T, uk[:, :r] @ uk[:, :r].T, atol=1e-10)  # same leading subspace
    hooi = get_method("tucker").factorize(layer, 12)  # default: HOSVD + up to 5 HOOI sweeps
    assert rel(hooi.effective_weight(), layer.weight) < rel(f.effective_weight(), layer.weight)


def test_linear_paths_agree_and_leading_dims():
    layer, m = make("784->256"), get_method("tucker")
    f = m.factorize(layer, 30)
    for batch in (1, 7, 4096):
        x = sample(layer, batch)
        assert torch.allclose(f(x), F.linear(x, f.effective_weight(), layer.bias), atol=1e-10)
    x = sample(layer, 3)
    assert torch.allclose(f.contract(x), x @ f.matrix().T, atol=1e-12)
    x3 = torch.randn(2, 3, 784, dtype=torch.float64)
    assert f(x3).shape == (2, 3, 256)


def test_rejects():
    with pytest.raises(CompressionError):
        get_method("tucker").knobs(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(TypeError):
        get_method("tucker", rank=3)
    with pytest.raises(TypeError):
        get_method("tucker", n_iter_max=-1)


# --- batch sizes, dtypes, devices -------------------------------------------------------------
@pytest.mark.parametrize("name", ["784->256", "conv 3ch 3x3 s2 p1", "conv 6->16 5x5"])
@pytest.mark.parametrize("batch", [1, 7])
def test_bf16_and_batch_sizes(name, batch):
    check_bf16_and_batch(get_method("tucker"), name, 5, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["784->256", "conv 3ch 3x3 s2 p1"])
def test_cuda(name):
    layer, m = make(name, torch.float32).cuda(), get_method("tucker")
    f = m.factorize(layer, m.knobs(layer)[-1])
    assert all(p.is_cuda for p in f.parameters())
    x = sample(layer, 7, torch.float32).cuda()
    assert rel(f(x), layer(x)) < 1e-4
    fb = m.factorize(layer.to(torch.bfloat16), 3)
    assert fb(x.bfloat16()).dtype == torch.bfloat16


def test_tensorly_backend_untouched_and_deterministic():
    check_backend_untouched_and_deterministic(get_method("tucker"), "conv 6->16 5x5", 7)


# --- allocation ---------------------------------------------------------------------------------
def test_allocator_reaches_2_to_1000():
    """With biases the allocator saturates at the smallest levels."""
    m, free = get_method("tucker"), fc2_layers(bias=False)
    check_grid_reaches_1000(m, free)
    check_allocation(m, free, RATIOS, max_step=1.35)
    check_allocation(m, fc2_layers(bias=True), RATIOS, max_step=1.35)
    conv = {"conv2": nn.Conv2d(64, 128, 3)}  # Tucker-2 of a conv: 64 + 9 + 128 params at level 1
    check_allocation(m, conv, [2, 10, 100, 300], max_step=1.35)
