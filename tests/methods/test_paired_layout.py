"""The paired (TT-matrix) layout of ``tucker`` and ``cp`` on Linear layers: exact sizes,
lossless top knob, and why it exists: its rank-1 terms are Kronecker products (full matrix
rank), where the side layout's are rank-1 matrices."""
from __future__ import annotations

import math
import pytest
import torch
from torch import nn

from bench.registry import get_method
from methods._tensorize import from_paired, paired_shape, to_paired, tt_modes
from tests.decomp_cases import make, rel, sample

LINEARS = ["784->256", "120->84", "84->10", "13->7 primes", "no bias"]


@pytest.mark.parametrize("name", LINEARS)
def test_paired_view_is_a_bijection_that_maps_kronecker_products_to_outer_products(name):
    layer = make(name)
    om, im = tt_modes(layer.out_features, layer.in_features, None)
    t = to_paired(layer.weight, om, im)
    assert t.shape == paired_shape(om, im) and torch.equal(from_paired(t, om, im), layer.weight)
    small = [torch.randn(o, i, dtype=torch.float64) for o, i in zip(om, im)]
    kron = small[0]
    for s in small[1:]:
        kron = torch.kron(kron, s)
    outer = to_paired(kron, om, im).reshape(-1)
    vectors = [s.reshape(-1) for s in small]  # a 1 x 1 pair is a scalar factor: its mode is dropped
    expected = vectors[0]
    for v in vectors[1:]:
        expected = torch.outer(expected, v).reshape(-1)
    assert torch.allclose(outer, expected)


@pytest.mark.parametrize("method", ["tucker", "cp"])
@pytest.mark.parametrize("name", LINEARS)
def test_paired_sizes_are_exact_and_the_top_knob_is_lossless(method, name):
    layer, m = make(name), get_method(method, layout="paired")
    knobs = m.knobs(layer)
    x = sample(layer, 4)
    for k in sorted({1, 2, knobs[-1]} & set(knobs)):
        rep = m.factorize(layer, k)
        assert sum(p.numel() for p in rep.parameters()) == m.layer_params(layer, k)
        assert rep.tnbench_info["layout"] == "paired"
    assert rel(rep(x), layer(x)) < 1e-10


@pytest.mark.parametrize("method", ["tucker", "cp"])
def test_rank_one_is_a_kronecker_product_in_the_paired_layout_and_a_rank_one_matrix_in_the_side_one(method):
    layer = make("120->84")
    sides, paired = get_method(method), get_method(method, layout="paired")
    assert torch.linalg.matrix_rank(sides.factorize(layer, 1).effective_weight()) == 1
    om, im = tt_modes(84, 120, None)
    kron_rank = math.prod(min(o, i) for o, i in zip(om, im))  # a Kronecker product's rank: the factors' product
    assert kron_rank > 50 and torch.linalg.matrix_rank(paired.factorize(layer, 1).effective_weight()) == kron_rank
    sizes = paired_shape(om, im)
    tt_rank1 = get_method("tt").layer_params(layer, 1)  # rank-1 TT: one (o_k i_k) core per mode
    assert tt_rank1 == sum(sizes) + 84
    assert paired.layer_params(layer, 1) == tt_rank1 + (1 if method == "tucker" else 0)  # + Tucker's 1x..x1 core
    kron = torch.ones(1, 1, dtype=torch.float64)
    for o, i in zip(om, im):
        kron = torch.kron(kron, torch.randn(o, i, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_(kron)
    # exact up to CP's float32 ALS with its small ridge (l2_reg 3e-5)
    assert rel(paired.factorize(layer, 1).effective_weight(), kron) < (1e-8 if method == "tucker" else 1e-4)


@pytest.mark.parametrize("method", ["tucker", "cp"])
def test_paired_layout_trains_under_bf16_autocast_and_scales_for_bias_calibration(method):
    layer = make("120->84", dtype=torch.float32)
    rep = get_method(method, layout="paired").factorize(layer, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rep(torch.randn(8, 120)).float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rep.parameters())
    before = rep.effective_weight().detach().clone()
    rep.scale_weight_(3.0)
    assert torch.allclose(rep.effective_weight(), 3 * before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["tucker", "cp"])
@pytest.mark.parametrize("options, says", [({"layout": "pairs"}, "layout must be one of sides, paired"),
                                           ({"layout": "paired", "cores": 0}, "cores must be a positive integer")])
def test_bad_layout_options_are_refused_by_name(method, options, says):
    with pytest.raises(TypeError, match=says):
        get_method(method, **options)
