"""``tt`` (TT-matrix / MPO): size model, lossless top knob, geometry, dtypes, allocation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import CompressionError
from bench.registry import get_method
from methods._tensorize import balanced_factors, organ_pipe
from methods.tt import bond_caps, tt_modes
from tests.decomp_cases import (LAYERS, RATIOS, check_allocation, check_backend_untouched_and_deterministic,
                                 check_bf16_and_batch, check_grid_reaches_1000, fc2_layers, make, rel, sample)



# --- the factorisation rule -------------------------------------------------------------------
def test_balanced_factors_and_arrangement():
    assert balanced_factors(784, 4) == (7, 7, 4, 4)
    assert organ_pipe(balanced_factors(784, 4)) == (4, 7, 7, 4)
    assert balanced_factors(10, 4) == (5, 2, 1, 1)       # uneven factors instead of padding
    assert balanced_factors(84, 3) == (7, 4, 3)
    assert balanced_factors(13, 3) == (13, 1, 1)          # a prime stays whole
    for n in (1, 10, 84, 97, 120, 784, 4608):
        for d in (2, 3, 4):
            f = balanced_factors(n, d)
            assert math.prod(f) == n and len(f) == d and list(f) == sorted(f, reverse=True)
    assert tt_modes(256, 784, None) == ((4, 4, 4, 4), (4, 7, 7, 4))
    assert tt_modes(10, 256, 4) == ((1, 2, 5, 1), (4, 4, 4, 4))


# --- size model and lossless top knob -----------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_params_exact_and_full_rank_lossless(name):
    layer, m = make(name), get_method("tt")
    knobs = m.knobs(layer)
    assert knobs == list(range(1, len(knobs) + 1))
    params = [m.layer_params(layer, k) for k in knobs]
    assert params == sorted(set(params))  # strictly increasing
    picks = {knobs[0], knobs[len(knobs) // 2], knobs[-1]}
    for k in picks:
        assert m.module_params(m.factorize(layer, k)) == m.layer_params(layer, k)
    full = m.factorize(layer, knobs[-1])
    x = sample(layer, 5)
    assert rel(full(x), layer(x)) < 1e-10
    assert rel(full.effective_weight(), layer.weight) < 1e-10
    assert full.tnbench_info["clipped"] is False


def test_ranks_follow_bond_caps_and_clip_is_recorded():
    layer, m = make("784->256"), get_method("tt")
    assert bond_caps((4, 4, 4, 4), (4, 7, 7, 4)) == [16, 448, 16]
    f = m.factorize(layer, 20)
    assert f.tnbench_info["ranks"] == [1, 16, 20, 16, 1]
    assert [tuple(c.shape) for c in f.cores] == [(1, 4, 4, 16), (16, 4, 7, 20), (20, 4, 7, 16), (16, 4, 4, 1)]
    big = m.factorize(layer, 10_000)
    assert big.tnbench_info == {"requested": 10_000, "rank": 448, "clipped": True, "ranks": [1, 16, 448, 16, 1],
                                "out_modes": [4, 4, 4, 4], "in_modes": [4, 7, 7, 4], "layout": "matrix"}
    assert m.layer_params(layer, 10_000) == m.layer_params(layer, 448) == m.module_params(big)
    with pytest.raises(CompressionError):
        m.factorize(layer, 0)
    with pytest.raises(CompressionError):
        m.layer_params(layer, 2.5)


def test_truncated_tt_is_the_tt_svd_and_both_paths_agree():
    layer, m = make("120->84"), get_method("tt")
    f = m.factorize(layer, 3)
    x = sample(layer, 4)
    dense = F.linear(x, f.matrix(), layer.bias)
    assert torch.allclose(f.contract(x) + layer.bias, dense, atol=1e-12)
    for batch in (1, 7, 4096):  # small batches contract, big ones form the matrix
        xb = sample(layer, batch)
        assert torch.allclose(f(xb), F.linear(xb, f.effective_weight(), layer.bias), atol=1e-10)
    # TT-SVD bounds (Oseledets 2011): max_k eps_k^2 <= err^2 <= sum_k eps_k^2, eps_k the best
    # rank-r_k error of the k-th unfolding of the (m1 n1, m2 n2, ...) tensor
    om, im, ranks = f.out_modes, f.in_modes, f.tnbench_info["ranks"]
    d = len(om)
    t = layer.weight.detach().reshape(*om, *im).permute(*[j for k in range(d) for j in (k, d + k)])
    eps = []
    for k in range(1, d):
        s = torch.linalg.svdvals(t.reshape(math.prod(a * b for a, b in zip(om[:k], im[:k])), -1))
        eps.append((s[ranks[k]:] ** 2).sum().item())
    err2 = ((f.effective_weight() - layer.weight) ** 2).sum().item()
    assert max(eps) * (1 - 1e-9) <= err2 <= sum(eps) * (1 + 1e-9)


def test_conv_kernel_layout_runs_as_four_convs():
    m = get_method("tt")
    layer = make("conv 6->16 5x5")
    f = m.factorize(layer, 4)
    assert f.tnbench_info["layout"] == "kernel" and f.tnbench_info["ranks"] == [1, 4, 4, 4, 1]
    assert [tuple(c.shape) for c in f.cores] == [(1, 1, 6, 4), (4, 1, 5, 4), (4, 1, 5, 4), (4, 16, 1, 1)]
    assert m.layer_params(layer, 4) == 6 * 4 + 4 * 5 * 4 * 2 + 4 * 16 + 16
    for name in ("conv 1ch 5x5 pad2", "conv 3ch 3x3 s2 p1", "conv dilated same", "conv reflect"):
        layer = make(name)
        f = m.factorize(layer, 2)
        x = sample(layer, 3)
        ref = layer._conv_forward(x, f.effective_weight(), layer.bias)
        assert torch.allclose(f.separable_conv(x), ref, atol=1e-12)
        assert torch.allclose(f(x), ref, atol=1e-12)
    big = nn.Conv2d(64, 128, 3, padding=1).double()
    x = torch.randn(2, 64, 16, 16, dtype=torch.float64)
    assert m.factorize(big, 4)._separable_is_cheaper(x)            # small ranks: four convs
    assert not m.factorize(big, m.knobs(big)[-1])._separable_is_cheaper(x)  # full rank: dense kernel


def test_conv_matrix_layout_and_pointwise_convs():
    m = get_method("tt", conv_layout="matrix")
    layer = make("conv 6->16 5x5")
    f = m.factorize(layer, m.knobs(layer)[-1])
    assert f.tnbench_info["layout"] == "matrix" and f.tnbench_info["out_modes"] == [2, 4, 2]
    x = sample(layer, 2)
    assert rel(f(x), layer(x)) < 1e-10
    assert m.module_params(f) == m.layer_params(layer, m.knobs(layer)[-1])
    point = nn.Conv2d(32, 48, 1).double()  # a 1x1 conv is a Linear over channels: matrix layout
    g = get_method("tt").factorize(point, 3)
    assert g.tnbench_info["layout"] == "matrix" and len(g.cores) == 2
    with pytest.raises(TypeError):
        get_method("tt", conv_layout="rows")


def test_leading_dims_and_options():
    layer, m = make("84->10"), get_method("tt")
    f = m.factorize(layer, 2)
    x = torch.randn(2, 3, 84, dtype=torch.float64)
    assert torch.allclose(f(x), F.linear(x, f.effective_weight(), layer.bias), atol=1e-12)
    assert get_method("tt", cores=2).factorize(layer, 1).tnbench_info["out_modes"] == [2, 5]
    with pytest.raises(TypeError):
        get_method("tt", cores=1)
    with pytest.raises(TypeError):
        get_method("tt", bogus=3)


def test_grouped_conv_rejected():
    with pytest.raises(CompressionError):
        get_method("tt").knobs(nn.Conv2d(4, 4, 3, groups=2))


# --- batch sizes, dtypes, devices -------------------------------------------------------------
@pytest.mark.parametrize("name", ["784->256", "conv 3ch 3x3 s2 p1", "conv 6->16 5x5"])
@pytest.mark.parametrize("batch", [1, 7])
def test_bf16_and_batch_sizes(name, batch):
    check_bf16_and_batch(get_method("tt"), name, 3, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["784->256", "conv 3ch 3x3 s2 p1"])
def test_cuda(name):
    layer, m = make(name, torch.float32).cuda(), get_method("tt")
    for k in (2, m.knobs(layer)[-1]):
        f = m.factorize(layer, k)
        assert all(p.is_cuda for p in f.parameters())
        x = sample(layer, 7, torch.float32).cuda()
        assert torch.isfinite(f(x)).all()
    assert rel(f(x), layer(x)) < 1e-4
    fb = m.factorize(layer.to(torch.bfloat16), 2)
    assert fb(x.bfloat16()).dtype == torch.bfloat16


def test_tensorly_backend_untouched_and_deterministic():
    check_backend_untouched_and_deterministic(get_method("tt"), "256->10", 3)


# --- allocation ---------------------------------------------------------------------------------
def test_allocator_reaches_2_to_1000():
    """With biases the allocator saturates at the smallest knobs."""
    m, free = get_method("tt"), fc2_layers(bias=False)
    check_grid_reaches_1000(m, free)
    check_allocation(m, free, RATIOS, max_step=2.5)       # TT params grow ~ r^2 per step
    check_allocation(m, fc2_layers(bias=True), RATIOS, max_step=2.5)
    conv = {"conv2": nn.Conv2d(64, 128, 3)}  # kernel layout: r (64 + 128) + 6 r^2 params
    check_allocation(m, conv, [2, 10, 100, 300], max_step=1.6)
