"""NN-BCD: monotone objective, TT ranks, exact sparsity, applicability, parameter counts."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.compressor import CompressionError, FinetuneContext, dense_params, get_layer
from bench.models import build_network
from bench.registry import get_method
from methods.nnbcd import (BCDProblem, balanced_factors, contract_cores, matrix_to_tensor,
                           relu_prox, tensor_to_matrix, tt_core_params, tt_ranks, tt_svd)


def _data(shape=(1, 4, 4), classes=3, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    proj = torch.randn(x[0].numel(), classes, generator=g)
    y = (x.flatten(1) @ proj).argmax(1)  # learnable labels
    k = n * 2 // 3
    return SimpleNamespace(x_train=x[:k], y_train=y[:k], x_val=x[k:], y_val=y[k:],
                           num_classes=classes)


def _run(method, net_name, names, ratio, data, **options):
    torch.manual_seed(0)
    net = build_network(net_name, tuple(data.x_train.shape[1:]), data.num_classes)
    m = get_method(method, **options)
    layers = {n: get_layer(net, n) for n in names}
    knobs = m.allocate(layers, ratio)
    dense = {n: copy.deepcopy(l) for n, l in layers.items()}
    m.compress(net, knobs)
    ctx = FinetuneContext(train=None, epochs=1, layer_names=names, dense_layers=dense, knobs=knobs,
                          method=m, data=data, device=torch.device("cpu"))
    assert m.skip_reason(net, names) is None
    m.finetune(net, ctx)
    return net, m, layers, knobs, ctx


def _assert_monotone(obj):
    assert len(obj) >= 2
    for a, b in zip(obj, obj[1:]):
        assert b <= a + 1e-9 * abs(obj[0]), obj
    assert obj[-1] < obj[0]


def test_balanced_factors_and_tt_shapes():
    assert balanced_factors(784, 3) == [7, 8, 14]
    assert balanced_factors(256, 2) == [16, 16]
    assert balanced_factors(10, 3) == [1, 2, 5]
    for n, d in [(784, 3), (97, 2), (120, 4)]:
        f = balanced_factors(n, d)
        assert len(f) == d and torch.tensor(f).prod() == n
    w = torch.randn(12, 30)
    o, i = balanced_factors(12, 2), balanced_factors(30, 2)
    assert torch.equal(tensor_to_matrix(matrix_to_tensor(w, o, i), o, i), w)


@pytest.mark.parametrize("rank", [1, 3, 7, 100])
def test_tt_projection_has_the_stated_ranks(rank):
    torch.manual_seed(1)
    w = torch.randn(24, 60, dtype=torch.float64)
    o, i = balanced_factors(24, 3), balanced_factors(60, 3)
    modes = [a * b for a, b in zip(o, i)]
    cores = tt_svd(w, o, i, rank)
    assert [c.shape[0] for c in cores] + [1] == tt_ranks(modes, rank)
    assert [c.shape[1] for c in cores] == modes
    assert sum(c.numel() for c in cores) == tt_core_params(modes, rank)
    g = tensor_to_matrix(contract_cores(cores), o, i)
    again = tensor_to_matrix(contract_cores(tt_svd(g, o, i, rank)), o, i)
    assert torch.allclose(again, g, atol=1e-9)  # a TT-rank-r matrix is a fixed point
    full = max(tt_ranks(modes, 10 ** 9))
    if rank >= full:
        assert torch.allclose(g, w, atol=1e-9)
    else:
        assert (g - w).norm() > 1e-3


def test_relu_prox_is_the_exact_minimiser():
    torch.manual_seed(2)
    v, a = torch.randn(200, dtype=torch.float64) * 2, torch.randn(200, dtype=torch.float64) * 2
    for gamma, beta in [(1.0, 1.0), (10.0, 0.5), (0.1, 3.0)]:
        u = relu_prox(v, a, gamma, beta)
        grid = torch.linspace(-8, 8, 16001, dtype=torch.float64)[:, None]
        f = gamma / 2 * (v - torch.relu(grid)) ** 2 + beta / 2 * (grid - a) ** 2
        fu = gamma / 2 * (v - torch.relu(u)) ** 2 + beta / 2 * (u - a) ** 2
        assert (fu <= f.min(0).values + 1e-9).all()


def test_bcd_objective_is_non_increasing_on_a_small_mlp():
    torch.manual_seed(3)
    n, dims = 300, [12, 16, 8, 3]
    x = torch.randn(n, dims[0], dtype=torch.float64)
    y = nn.functional.one_hot(torch.randint(0, 3, (n,)), 3).double()
    ws = [torch.randn(dims[l + 1], dims[l], dtype=torch.float64) * 0.5 for l in range(3)]
    bs = [torch.randn(dims[l + 1], dtype=torch.float64) * 0.1 for l in range(3)]
    o, i = balanced_factors(16, 2), balanced_factors(12, 2)

    def project(w):
        return tensor_to_matrix(contract_cores(tt_svd(w, o, i, 2)), o, i)

    def prune(w):
        keep = w.abs().flatten().sort(descending=True).values[40]
        return w * (w.abs() > keep)

    prob = BCDProblem(x, y, ws, bs, [project(ws[0]), prune(ws[1]), None], [project, prune, None],
                      gamma=1.0, rho=1.0, alpha=0.1, tau=1.0)
    obj = [prob.objective()]
    for _ in range(15):
        prob.sweep()
        obj.append(prob.objective())
    _assert_monotone(obj)
    assert (prob.final_weights()[0] - project(prob.final_weights()[0])).norm() < 1e-8
    assert int((prob.final_weights()[1] != 0).sum()) <= 40


def test_nnbcd_tt_finetune_on_fc2():
    data = _data()
    net, m, layers, knobs, ctx = _run("nnbcd-tt", "fc2", ["fc1", "fc2"], 4, data,
                                      iterations=6, subset=150, order=2)
    ex = ctx.extras
    _assert_monotone(ex["nnbcd_objective"])
    assert ex["nnbcd_subset"] == 150 and len(ex["nnbcd_val_acc"]) == 7
    for n in ["fc1", "fc2"]:
        mod = get_layer(net, n)
        assert m.module_params(mod) == m.layer_params(layers[n], knobs[n])
        w = mod.effective_weight().detach().double()
        proj = tensor_to_matrix(contract_cores(tt_svd(w, mod.out_factors, mod.in_factors, mod.rank)),
                                mod.out_factors, mod.in_factors)
        assert torch.allclose(proj, w, atol=1e-5)  # the final weight is TT-rank r
        assert [c.shape[2] for c in mod.cores][:-1] == tt_ranks(
            [a * b for a, b in zip(mod.out_factors, mod.in_factors)], knobs[n])[1:-1]
    # the module computes with its effective weight
    x = data.x_val[:5]
    ref = nn.functional.linear(torch.relu(net.fc1(x.flatten(1))), net.fc2.effective_weight(), net.fc2.bias)
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_nnbcd_prune_finetune_keeps_exact_sparsity():
    data = _data()
    net, m, layers, knobs, ctx = _run("nnbcd-prune", "fc2", ["fc1", "fc2"], 8, data,
                                      iterations=5, subset=200, select="last")
    _assert_monotone(ctx.extras["nnbcd_objective"])
    dense = sum(dense_params(l) for l in layers.values())
    total = sum(m.layer_params(layers[n], k) for n, k in knobs.items())
    assert total == round(dense / 8)
    for n, k in knobs.items():
        mod = get_layer(net, n)
        assert int((mod.effective_weight() != 0).sum()) == k
        assert m.module_params(mod) == m.layer_params(layers[n], k)
    assert ctx.extras["nnbcd_selected_iteration"] == 5


def test_lenet5_fc_head_is_supported_and_convs_are_skipped():
    net = build_network("lenet5", (1, 28, 28), 10)
    for method in ("nnbcd-tt", "nnbcd-prune"):
        m = get_method(method)
        assert m.skip_reason(net, ["fc1", "fc2"]) is None
        assert "Conv2d" in m.skip_reason(net, ["conv2", "conv3", "fc1", "fc2"])
        assert m.skip_reason(build_network("fc2", (1, 4, 4), 3), ["fc1", "fc2"]) is None
    data = _data(shape=(1, 28, 28), classes=10, n=90)
    _, _, _, _, ctx = _run("nnbcd-tt", "lenet5", ["fc1", "fc2"], 2, data, iterations=3, order=2)
    assert ctx.extras["nnbcd_head"] == ["fc1", "fc2"]
    _assert_monotone(ctx.extras["nnbcd_objective"])


def test_a_non_relu_head_is_refused():
    class TanhMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x.flatten(1))))

    data = _data()
    net, m = TanhMLP(), get_method("nnbcd-prune", iterations=1)
    dense = {n: copy.deepcopy(get_layer(net, n)) for n in ["fc1", "fc2"]}
    m.compress(net, {"fc1": 50, "fc2": 10})
    ctx = FinetuneContext(train=None, epochs=1, layer_names=["fc1", "fc2"], dense_layers=dense,
                          knobs={}, method=m, data=data, device=torch.device("cpu"))
    with pytest.raises(CompressionError, match="ReLU MLP"):
        m.finetune(net, ctx)


@pytest.mark.parametrize("method", ["nnbcd-tt", "nnbcd-prune"])
def test_layer_params_equal_module_params(method):
    m = get_method(method)
    for layer in [nn.Linear(784, 256), nn.Linear(256, 10), nn.Linear(120, 84, bias=False)]:
        ks = list(m.knobs(layer))
        for k in [ks[0], ks[len(ks) // 3], ks[-1]]:
            assert m.layer_params(layer, k) == m.module_params(m.factorize(layer, k))
    with pytest.raises(CompressionError):
        m.factorize(nn.Conv2d(3, 4, 3), 1)
    with pytest.raises(TypeError):
        get_method(method, bogus=1)


def test_tt_full_rank_reproduces_the_layer():
    torch.manual_seed(4)
    layer = nn.Linear(30, 12)
    m = get_method("nnbcd-tt", order=2)
    new = m.factorize(layer, m.knobs(layer)[-1])
    x = torch.randn(4, 30)
    assert torch.allclose(new(x), layer(x), atol=1e-5)
