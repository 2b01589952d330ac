"""NN-BCD: monotone objective, TT ranks, exact sparsity, applicability, parameter counts."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.compressor import CompressionError, FinetuneContext, dense_params, get_layer
from bench.models import build_network
from bench.registry import get_method
from methods.nnbcd import BCDProblem, relu_prox
from methods.tt import TTLayer, bond_ranks, tt_matrix, tt_modes, tt_svd


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


def _tt_project(w, out_modes, in_modes, rank):
    return tt_matrix(tt_svd(w, out_modes, in_modes, bond_ranks(rank, out_modes, in_modes))).reshape(w.shape)


@pytest.mark.parametrize("rank", [1, 3, 7, 100])
def test_tt_projection_is_a_fixed_point_on_tt_format(rank):
    torch.manual_seed(1)
    w = torch.randn(24, 60, dtype=torch.float64)
    om, im = tt_modes(24, 60, 3)
    g = _tt_project(w, om, im, rank)
    assert torch.allclose(_tt_project(g, om, im, rank), g, atol=1e-9)  # a TT-rank-r matrix is a fixed point
    full = get_method("tt", cores=3).max_rank(nn.Linear(60, 24))
    assert torch.allclose(g, w, atol=1e-9) if rank >= full else (g - w).norm() > 1e-3


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
    o, i = tt_modes(16, 12, 2)

    def project(w):
        return _tt_project(w, o, i, 2)

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
                                      iterations=6, patience=0, subset=150, cores=2)
    ex = ctx.extras
    _assert_monotone(ex["nnbcd_objective"])
    assert ex["nnbcd_subset"] == 150 and len(ex["nnbcd_val_acc"]) == 7
    assert ex["nnbcd_stop"]["rule"] == "max_sweeps" and ex["nnbcd_sweeps"] == 6
    for n in ["fc1", "fc2"]:
        mod = get_layer(net, n)
        assert isinstance(mod, TTLayer)
        assert m.module_params(mod) == m.layer_params(layers[n], knobs[n])
        w = mod.effective_weight().detach().double()
        proj = tt_matrix(tt_svd(w, mod.out_modes, mod.in_modes, mod.ranks()))
        assert torch.allclose(proj, w, atol=1e-5)  # the final weight is of the module's TT ranks
        assert mod.ranks() == bond_ranks(knobs[n], mod.out_modes, mod.in_modes)
    # the module computes with its effective weight
    x = data.x_val[:5]
    ref = nn.functional.linear(torch.relu(net.fc1(x.flatten(1))), net.fc2.effective_weight(), net.fc2.bias)
    assert torch.allclose(net(x), ref, atol=1e-5)


@pytest.mark.parametrize("layer", [nn.Linear(784, 256), nn.Linear(256, 10), nn.Linear(120, 84, bias=False)])
def test_nnbcd_tt_shares_tt_format_knob_and_size_model(layer):
    bcd, tt = get_method("nnbcd-tt"), get_method("tt")
    assert bcd.knobs(layer) == tt.knobs(layer) and bcd.knob_name == tt.knob_name
    for r in [1, 2, 5, tt.knobs(layer)[-1], 10 ** 6]:
        assert bcd.layer_params(layer, r) == tt.layer_params(layer, r)
        a, b = bcd.factorize(layer, r), tt.factorize(layer, r)
        assert type(a) is type(b) is TTLayer
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
        assert bcd.module_params(a) == bcd.layer_params(layer, r)
    assert get_method("nnbcd-tt", cores=2).layer_params(layer, 3) == get_method("tt", cores=2).layer_params(layer, 3)


def _plateau_run(**options):
    data = _data(n=600)
    return _run("nnbcd-prune", "fc2", ["fc1"], 8, data, subset=300, **options)[-1].extras


def test_sweeps_stop_on_a_validation_plateau_and_keep_the_best():
    ex = _plateau_run(max_sweeps=200, patience=3, min_delta=0.001)
    val, stop = ex["nnbcd_val_acc"], ex["nnbcd_stop"]
    n = ex["nnbcd_sweeps"]
    assert stop["rule"] == "plateau" and stop["sweep"] == n < 200 and len(val) == n + 1
    # the rule: no gain of >= min_delta over the level of the sweeps' last such gain for `patience`
    # sweeps (the first sweep sets the first level: the start is not a level to beat)
    ref, since = -float("inf"), 0
    for it in range(1, n + 1):
        if val[it] >= ref + 0.001 - 1e-12:
            ref, since = val[it], it
        assert (it - since >= 3) == (it == n)
    assert ex["nnbcd_selected_sweep"] == val.index(max(val))  # best validation, not the last
    assert ex["nnbcd_curve_sweeps"] == list(range(n + 1)) and len(ex["nnbcd_objective"]) == n + 1
    assert ex["nnbcd_seconds_per_sweep"] > 0


def test_sweep_0_is_the_network_handed_in_and_is_kept_when_no_sweep_beats_it(monkeypatch):
    """The network every method starts from is the compressed one with its calibrated biases:
    NN-BCD's sweep 0 is that network, not its start variables (compressed weights beside the
    dense biases), and when every sweep is worse on validation, that network comes back as it was."""
    data = _data(n=600)
    torch.manual_seed(0)
    net = build_network("fc2", (1, 4, 4), data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(200):  # a trained start, far above what a zeroed layer predicts
        opt.zero_grad()
        nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
        opt.step()
    m = get_method("nnbcd-tt", subset=300, max_sweeps=30, patience=4)
    layers = {"fc1": get_layer(net, "fc1")}
    dense = {"fc1": copy.deepcopy(layers["fc1"])}
    knobs = m.allocate(layers, 4)
    m.compress(net, knobs)
    with torch.no_grad():  # stands for the bias calibration: biases unlike the dense layer's
        net.fc1.bias.add_(0.5)
    handed_in = copy.deepcopy(net)
    with torch.no_grad():
        start_val = float((net(data.x_val).argmax(1) == data.y_val).double().mean())

    def worse_sweep(prob):  # every sweep zeroes the compressed weights: never better than the start
        for g in prob.g:
            if g is not None:
                g.zero_()
    monkeypatch.setattr(BCDProblem, "sweep", worse_sweep)
    ctx = FinetuneContext(train=None, epochs=1, layer_names=["fc1"], dense_layers=dense, knobs=knobs,
                          method=m, data=data, device=torch.device("cpu"))
    m.finetune(net, ctx)
    ex = ctx.extras
    assert ex["nnbcd_val_acc"][0] == pytest.approx(start_val, abs=1e-12)
    assert max(ex["nnbcd_val_acc"][1:]) < start_val
    assert ex["nnbcd_selected_sweep"] == 0
    with torch.no_grad():  # written back as it came (TT cores up to their gauge)
        assert torch.allclose(net(data.x_val), handed_in(data.x_val), atol=1e-5)
        assert torch.equal(net.fc1.bias, handed_in.fc1.bias)
    # constant sweeps: the first sets the level, `patience` more without a gain stop it
    assert ex["nnbcd_stop"]["rule"] == "plateau" and ex["nnbcd_sweeps"] == 1 + 4


def test_fixed_sweeps_and_the_old_option_name():
    ex = _plateau_run(iterations=4, patience=0, select="last")
    assert ex["nnbcd_stop"]["rule"] == "max_sweeps" and ex["nnbcd_sweeps"] == 4
    assert ex["nnbcd_selected_sweep"] == 4 and len(ex["nnbcd_val_acc"]) == 5
    with pytest.raises(ValueError):
        get_method("nnbcd-tt", iterations=4, max_sweeps=300)
    with pytest.raises(ValueError):
        get_method("nnbcd-tt", patience=-1)
    with pytest.raises(TypeError):
        get_method("nnbcd-tt", order=3)  # the old order-d TT format is gone: ``cores`` as in tt


def test_without_a_validation_split_all_sweeps_run_and_the_last_is_kept():
    data = _data(n=300)
    data.x_val, data.y_val = data.x_val[:0], data.y_val[:0]
    ex = _run("nnbcd-prune", "fc2", ["fc1"], 8, data, subset=100, max_sweeps=5, patience=2)[-1].extras
    assert ex["nnbcd_stop"]["rule"] == "max_sweeps" and ex["nnbcd_selected_sweep"] == 5


def test_long_curves_are_thinned():
    from methods.nnbcd import _thin

    assert _thin(5) == [0, 1, 2, 3, 4]
    t = _thin(301)
    assert len(t) == 101 and t[0] == 0 and t[-1] == 300 and t == sorted(set(t))


def test_nnbcd_prune_finetune_keeps_exact_sparsity():
    data = _data()
    net, m, layers, knobs, ctx = _run("nnbcd-prune", "fc2", ["fc1", "fc2"], 8, data,
                                      iterations=5, patience=0, subset=200, select="last")
    _assert_monotone(ctx.extras["nnbcd_objective"])
    dense = sum(dense_params(l) for l in layers.values())
    total = sum(m.layer_params(layers[n], k) for n, k in knobs.items())
    assert total == round(dense / 8)
    for n, k in knobs.items():
        mod = get_layer(net, n)
        assert int((mod.effective_weight() != 0).sum()) == k
        assert m.module_params(mod) == m.layer_params(layers[n], k)
    assert ctx.extras["nnbcd_selected_sweep"] == 5


def test_lenet5_fc_head_is_supported_and_convs_are_skipped():
    net = build_network("lenet5", (1, 28, 28), 10)
    for method in ("nnbcd-tt", "nnbcd-prune"):
        m = get_method(method)
        assert m.skip_reason(net, ["fc1", "fc2"]) is None
        assert "Conv2d" in m.skip_reason(net, ["conv2", "conv3", "fc1", "fc2"])
        assert m.skip_reason(build_network("fc2", (1, 4, 4), 3), ["fc1", "fc2"]) is None
    data = _data(shape=(1, 28, 28), classes=10, n=90)
    _, _, _, _, ctx = _run("nnbcd-tt", "lenet5", ["fc1", "fc2"], 2, data, iterations=3, cores=2)
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
    m = get_method("nnbcd-tt", cores=2)
    new = m.factorize(layer, m.knobs(layer)[-1])
    x = torch.randn(4, 30)
    assert torch.allclose(new(x), layer(x), atol=1e-5)
