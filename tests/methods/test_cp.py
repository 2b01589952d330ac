"""``cp`` (Lebedev CP convs, CP of reshaped Linears): size model, explicit lossless top rank,
bounded and deterministic ALS with fallbacks, geometry, dtypes, allocation."""
from __future__ import annotations


import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import CompressionError
from bench.registry import get_method
from methods.cp import als_sweeps, explicit_cp, max_cp_rank
from tests.decomp_cases import (LAYERS, RATIOS, check_allocation, check_backend_untouched_and_deterministic,
                                 check_bf16_and_batch, check_grid_reaches_1000, fc2_layers, make, rel, sample)



def cp_dense(factors) -> torch.Tensor:
    with tl.backend_context("pytorch", local_threadsafe=True):
        return tl.cp_to_tensor((None, factors))


# --- size model and lossless top knob -----------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_params_exact_and_full_rank_lossless(name):
    layer, m = make(name), get_method("cp", n_iter_max=5)
    knobs = m.knobs(layer)
    assert knobs == list(range(1, len(knobs) + 1))
    per_rank = sum(layer.weight.shape) if isinstance(layer, nn.Conv2d) else None
    bias = 0 if layer.bias is None else layer.bias.numel()
    if per_rank:
        assert m.layer_params(layer, 3) == 3 * per_rank + bias
    for k in {1, 2, min(len(knobs) // 2, 40), knobs[-1]}:
        assert m.module_params(m.factorize(layer, k)) == m.layer_params(layer, k)
    full = m.factorize(layer, knobs[-1])
    assert full.tnbench_info["init"] == "explicit" and full.tnbench_info["clipped"] is False
    x = sample(layer, 5)
    assert rel(full(x), layer(x)) < 1e-10
    assert rel(full.effective_weight(), layer.weight) < 1e-10


def test_explicit_construction():
    w = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    assert max_cp_rank(w.shape) == 24
    f = explicit_cp(w)
    assert [tuple(x.shape) for x in f] == [(3, 24), (4, 24), (2, 24), (5, 24)]
    assert torch.allclose(cp_dense(f), w, atol=1e-14)
    norms = f[3].norm(dim=0)
    assert torch.all(norms[:-1] >= norms[1:])  # strongest fibres first


def test_clip_recorded_and_sizes():
    layer, m = make("784->256"), get_method("cp")
    assert m.layer_params(layer, 3) == 3 * (16 + 16 + 28 + 28) + 256
    f = m.factorize(layer, 10**6)
    info = f.tnbench_info
    assert (info["requested"], info["rank"], info["clipped"], info["modes"]) == (10**6, 7168, True, [16, 16, 28, 28])
    assert m.module_params(f) == m.layer_params(layer, 10**6) == 7168 * 88 + 256
    with pytest.raises(CompressionError):
        m.layer_params(layer, -1)


# --- ALS: bounded, deterministic, with fallbacks ------------------------------------------------
def test_als_on_512x512x3x3_stays_within_its_bound():
    torch.manual_seed(0)
    layer = nn.Conv2d(512, 512, 3, padding=1)
    m = get_method("cp", n_iter_max=6)
    f = m.factorize(layer, 4)
    info = f.tnbench_info
    assert info["init"] == "svd" and info["als_dtype"] == "float32"
    assert info["n_iter_max"] == 6 and info["als_bound"] == 6
    assert 1 <= info["als_iterations"] <= 6
    assert m.module_params(f) == 4 * (512 + 512 + 3 + 3) + 512


def test_als_recovers_an_exact_low_rank_kernel():
    torch.manual_seed(1)
    factors = [torch.randn(n, 3, dtype=torch.float64) for n in (8, 6, 3, 3)]
    layer = nn.Conv2d(6, 8, 3).double()
    with torch.no_grad():
        layer.weight.copy_(cp_dense(factors))
    f = get_method("cp", n_iter_max=200, tol=1e-14, l2_reg=0).factorize(layer, 3)
    assert rel(f.effective_weight(), layer.weight) < 1e-5  # float32 ALS first


def largest_component(f: nn.Module, layer: nn.Module) -> float:
    comps = [f.last.weight[:, :, 0, 0], f.first.weight[:, :, 0, 0].t(), f.vertical.weight[:, 0, :, 0].t(),
             f.horizontal.weight[:, 0, 0, :].t()]
    return (torch.stack([c.norm(dim=0) for c in comps]).prod(0).max() / layer.weight.norm()).item()


def test_ridge_keeps_als_away_from_degenerate_components():
    """Unregularised ALS at a rank above the mode sizes ends with cancelling components
    larger than the weight itself; the default relative ridge shrinks them, at no cost in fit."""
    torch.manual_seed(0)
    layer = nn.Conv2d(6, 16, 3)
    free = get_method("cp", l2_reg=0).factorize(layer, 24)
    ridge = get_method("cp").factorize(layer, 24)
    assert largest_component(free, layer) > largest_component(ridge, layer) and largest_component(free, layer) > 2
    assert rel(ridge.effective_weight(), layer.weight) <= rel(free.effective_weight(), layer.weight) + 0.01


def test_fallbacks_float64_random_then_explicit(monkeypatch):
    from tensorly.decomposition import _cp

    real = _cp.parafac
    calls = []

    def svd_fails(tensor, rank, init="svd", **kw):
        calls.append((init, tensor.dtype))
        if init == "svd":
            raise RuntimeError("svd did not converge")
        return real(tensor, rank, init=init, **kw)

    layer, m = make("conv 6->16 5x5"), get_method("cp", n_iter_max=5)
    monkeypatch.setattr("tensorly.decomposition.parafac", svd_fails)
    f = m.factorize(layer, 4)
    assert calls == [("svd", torch.float32), ("svd", torch.float64), ("random", torch.float64)]
    assert f.tnbench_info["init"] == "random"
    g = m.factorize(layer, 4)
    assert all(torch.equal(p, q) for p, q in zip(f.parameters(), g.parameters()))  # fixed seed

    def float32_diverges(tensor, rank, **kw):
        (w, fs), errs = real(tensor, rank, **kw)
        return (w, fs), (errs[:-1] + [torch.tensor(3.0)] if tensor.dtype == torch.float32 else errs)

    monkeypatch.setattr("tensorly.decomposition.parafac", float32_diverges)
    f = m.factorize(layer, 4)
    assert (f.tnbench_info["init"], f.tnbench_info["als_dtype"]) == ("svd", "float64")

    def nan(tensor, rank, **kw):
        (w, fs), errs = real(tensor, rank, **kw)
        return (w, [x * float("nan") for x in fs]), errs

    monkeypatch.setattr("tensorly.decomposition.parafac", nan)
    f = m.factorize(layer, 4)
    assert f.tnbench_info["init"] == "explicit-truncated" and f.tnbench_info["als_iterations"] == 0
    assert all(torch.isfinite(p).all() for p in f.parameters())


def test_flop_budget_skips_unaffordable_als():
    assert als_sweeps((64, 64, 64, 64), 32768, 50, 2e12, 2**28) == 0   # VGG head at 2x: no ALS
    assert als_sweeps((16, 16, 28, 28), 1138, 100, 2e12, 2**28) == 100
    assert als_sweeps((16, 16, 28, 28), 1138, 50, 2e10, 2**28) == 2
    layer = make("784->256")
    f = get_method("cp", max_als_flops=1e3).factorize(layer, 10)
    assert f.tnbench_info["init"] == "explicit-truncated" and f.tnbench_info["als_bound"] == 0
    assert get_method("cp").layer_params(layer, 10) == get_method("cp").module_params(f)


# --- structure, paths, options ----------------------------------------------------------------------
def test_conv_is_lebedev_cp():
    layer, m = make("conv 3ch 3x3 s2 p1"), get_method("cp", n_iter_max=5)
    f = m.factorize(layer, 5)
    assert (f.first.kernel_size, f.first.out_channels, f.first.bias) == ((1, 1), 5, None)
    assert (f.vertical.kernel_size, f.vertical.groups, f.vertical.stride, f.vertical.padding) == ((3, 1), 5, (2, 1), (1, 0))
    assert (f.horizontal.kernel_size, f.horizontal.groups, f.horizontal.stride, f.horizontal.padding) == ((1, 3), 5, (1, 2), (0, 1))
    assert f.last.out_channels == 8 and torch.equal(f.last.bias, layer.bias)
    for name in ("conv 3ch 3x3 s2 p1", "conv dilated same", "conv reflect"):
        layer = make(name)
        f = m.factorize(layer, 3)
        x = sample(layer, 7)
        assert torch.allclose(f(x), layer._conv_forward(x, f.effective_weight(), layer.bias), atol=1e-12)


def test_linear_paths_agree_and_leading_dims():
    layer, m = make("784->256"), get_method("cp", n_iter_max=3)
    f = m.factorize(layer, 12)
    for batch in (1, 7, 4096):
        x = sample(layer, batch)
        assert torch.allclose(f(x), F.linear(x, f.effective_weight(), layer.bias), atol=1e-10)
    assert f(torch.randn(2, 3, 784, dtype=torch.float64)).shape == (2, 3, 256)


def test_rejects():
    with pytest.raises(CompressionError):
        get_method("cp").factorize(nn.Conv2d(4, 4, 3, groups=2), 2)
    with pytest.raises(TypeError):
        get_method("cp", n_iter_max=0)
    with pytest.raises(TypeError):
        get_method("cp", init="svd")
    with pytest.raises(ValueError, match="l2_reg -1.0: expected a finite number >= 0"):
        get_method("cp", l2_reg=-1.0)
    with pytest.raises(ValueError, match="max_als_flops 0: expected a finite number > 0"):
        get_method("cp", max_als_flops=0)


# --- batch sizes, dtypes, devices -------------------------------------------------------------
@pytest.mark.parametrize("name", ["784->256", "conv 3ch 3x3 s2 p1", "conv 6->16 5x5"])
@pytest.mark.parametrize("batch", [1, 7])
def test_bf16_and_batch_sizes(name, batch):
    check_bf16_and_batch(get_method("cp", n_iter_max=5), name, 6, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["784->256", "conv 3ch 3x3 s2 p1"])
def test_cuda(name):
    layer, m = make(name, torch.float32).cuda(), get_method("cp", n_iter_max=5)
    f = m.factorize(layer, m.knobs(layer)[-1])
    assert all(p.is_cuda for p in f.parameters())
    x = sample(layer, 7, torch.float32).cuda()
    assert rel(f(x), layer(x)) < 1e-4
    g = m.factorize(layer.to(torch.bfloat16), 4)
    assert g.tnbench_info["init"] == "svd" and g(x.bfloat16()).dtype == torch.bfloat16


def test_tensorly_backend_untouched_and_deterministic():
    check_backend_untouched_and_deterministic(get_method("cp", n_iter_max=10), "120->84", 5)


# --- allocation ---------------------------------------------------------------------------------
def test_allocator_reaches_2_to_1000():
    """With biases the allocator saturates at rank 1."""
    m, free = get_method("cp"), fc2_layers(bias=False)
    check_grid_reaches_1000(m, free)
    check_allocation(m, free, RATIOS[:-1], max_step=1.35)
    check_allocation(m, free, RATIOS[-1:], max_step=1.75)  # 1000x sits between ranks 1 and 2
    check_allocation(m, fc2_layers(bias=True), RATIOS, max_step=1.35)
