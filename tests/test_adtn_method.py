"""The ``adtn`` method (methods/adtn.py): sizes, the layer wrapper (caching, conv semantics,
state_dict), allocation notes and the staged backward/forward/all fine-tuning."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.adtn import param_count
from bench.compressor import CompressionError, FinetuneContext, get_layer
from bench.registry import get_method
from methods.adtn import ADTNLayer, stage_epochs

FAST = {"prefit_steps": 5, "prefit_polish": 0}


class TwoFC(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def kron_weight(shape, seed):
    """A weight that is exactly a Kronecker product over the generator's site pairs (a
    rank-1 start reproduces it), so a pre-fit's target can be identified from its result."""
    g = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    q = (numel - 1).bit_length()
    assert 2 ** q == numel
    w = torch.ones(1)
    for n in [4] * (q // 2) + [2] * (q % 2):
        w = torch.kron(w, torch.randn(n, generator=g) + 2.0)
    return w.reshape(shape)


@pytest.mark.parametrize("layer", [nn.Linear(30, 20), nn.Linear(30, 20, bias=False), nn.Conv2d(3, 8, 3)])
def test_layer_params_equal_module_and_formula(layer):
    m = get_method("adtn", **FAST)
    assert m.knob_name == "depth"
    assert m.knobs(layer) == list(range(1, 9))
    for depth in (1, 2, 3):
        built = m.factorize(layer, depth)
        bias = layer.bias.numel() if layer.bias is not None else 0
        q = (layer.weight.numel() - 1).bit_length()
        assert m.layer_params(layer, depth) == m.module_params(built) == param_count(q, depth) + bias
        assert built.effective_weight().shape == layer.weight.shape
        assert built.tnbench_info["depth"] == depth and built.tnbench_info["sites"] == q
        assert 0 <= built.tnbench_info["prefit_rel_error"] <= 1.5
        info = built.tnbench_info
        assert info["grad_scale"] == pytest.approx(min(1.0, info["sgd_gain"] ** -0.5))
        assert float(built.generator.grad_scale) == pytest.approx(info["grad_scale"])


def test_paper_424_through_the_method():
    m = get_method("adtn")
    layers = [nn.Linear(512, 4096, bias=False, device="meta"), nn.Linear(4096, 4096, bias=False, device="meta")]
    assert sum(m.layer_params(l, 1) for l in layers) == 424


def test_options_are_checked():
    with pytest.raises(TypeError):
        get_method("adtn", depth=3)
    with pytest.raises(ValueError):
        get_method("adtn", order="sideways")
    with pytest.raises(ValueError):
        get_method("adtn", activation="swish")
    with pytest.raises(ValueError):
        get_method("adtn", grad_scale="fast")
    layer = get_method("adtn", grad_scale=1, **FAST).factorize(nn.Linear(6, 5), 2)
    assert layer.tnbench_info["grad_scale"] == 1.0 and float(layer.generator.grad_scale) == 1.0
    with pytest.raises(CompressionError):
        get_method("adtn", **FAST).factorize(nn.Linear(4, 4), 0)
    with pytest.raises(CompressionError):
        get_method("adtn").knobs(nn.BatchNorm2d(3))


def test_eval_cache_equals_training_generation_and_invalidates():
    torch.manual_seed(0)
    layer = get_method("adtn", **FAST).factorize(nn.Linear(16, 12), 2)
    x = torch.randn(5, 16)
    layer.train()
    y_train = layer(x)
    assert y_train.requires_grad
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
        cached = layer._cache
        assert cached is not None and torch.equal(y_eval, y_train.detach())
        layer(x)
        assert layer._cache is cached  # reused, not regenerated
    with torch.no_grad():  # a changed gate invalidates
        layer.generator.first_odd.mul_(1.5)
        y_changed = layer(x)
        assert layer._cache is not cached
        assert torch.equal(layer.effective_weight(), layer.generate())
        assert not torch.allclose(y_changed, y_eval)
    layer.train()
    assert layer._cache is None
    y = layer(x)  # eval mode with grad enabled still reaches the gates
    layer.eval()
    layer(x).sum().backward()
    assert layer.generator.gates.grad is not None and y.requires_grad


def test_conv_wrapper_matches_conv2d():
    torch.manual_seed(0)
    for kw in ({"stride": 2, "padding": 1, "dilation": 1}, {"stride": 1, "padding": 2, "dilation": 2},
               {"stride": 1, "padding": 1, "padding_mode": "reflect"}, {"padding": "same"}):
        conv = nn.Conv2d(3, 5, 3, **kw)
        new = get_method("adtn", **FAST).factorize(conv, 2)
        x = torch.randn(2, 3, 9, 9)
        w = new.effective_weight()
        ref = copy.deepcopy(conv)
        with torch.no_grad():
            ref.weight.copy_(w)
        assert torch.allclose(new(x), ref(x), atol=1e-6)
        if conv.padding_mode == "zeros":
            assert torch.allclose(new(x), F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation), atol=1e-6)


def test_state_dict_round_trip_weights_only():
    torch.manual_seed(0)
    model = TwoFC()
    m = get_method("adtn", **FAST)
    m.compress(model, {"fc1": 2, "fc2": 1})
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = TwoFC()
    torch.manual_seed(1)
    m.compress(other, {"fc1": 2, "fc2": 1})
    x = torch.randn(3, 8)
    assert not torch.allclose(other(x), model(x))
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(other(x), model(x))


def test_allocation_notes():
    m = get_method("adtn", max_depth=3)
    layers = {"fc": nn.Linear(256, 64, bias=False)}  # Q = 14: 100 params at depth 1
    assert m.allocate(layers, 16384 / 150)["fc"] == 1
    assert m._allocation["notes"] == []
    m.allocate(layers, 16384 / 50)
    assert any("over the budget" in n for n in m._allocation["notes"])
    assert m.allocate(layers, 2)["fc"] == 3
    assert any("far under" in n for n in m._allocation["notes"])


def test_stage_epochs_split_the_suite_epochs_without_adding_any():
    assert stage_epochs(1, 1) == [1]
    assert stage_epochs(4, 2) == [2, 2]
    assert stage_epochs(0.5, 4) == [0.125] * 4
    assert sum(stage_epochs(5, 3)) == pytest.approx(5)
    with pytest.raises(ValueError):
        stage_epochs(1, 0)


def _staged_run(order, epochs):
    """compress + finetune on TwoFC with a fake trainer that records, at each call, which
    layers are ADTN, and moves the dense fc1 to a new exactly-representable weight."""
    torch.manual_seed(0)
    model = TwoFC()
    with torch.no_grad():
        model.fc1.weight.copy_(kron_weight((4, 8), 1))
        model.fc2.weight.copy_(kron_weight((2, 4), 2))
    originals = {n: copy.deepcopy(get_layer(model, n)) for n in ("fc1", "fc2")}
    moved = kron_weight((4, 8), 3)
    m = get_method("adtn", order=order, prefit_steps=20, prefit_polish=0, init_noise=0.0)
    info = m.compress(model, {"fc2": 1, "fc1": 2})
    assert all(isinstance(get_layer(model, n), ADTNLayer) for n in ("fc1", "fc2"))
    assert info["fc1"]["prefit_rel_error"] < 1e-5 and info["fc2"]["order"] == order
    calls = []

    def train(net, epochs=None):
        calls.append(({n: isinstance(get_layer(net, n), ADTNLayer) for n in ("fc1", "fc2")},
                      epochs if epochs is not None else epochs_total))
        if not isinstance(net.fc1, ADTNLayer):
            with torch.no_grad():
                net.fc1.weight.copy_(moved)

    epochs_total = epochs
    ctx = FinetuneContext(train=train, epochs=epochs, layer_names=["fc2", "fc1"], dense_layers=originals,
                          knobs={"fc1": 2, "fc2": 1}, method=m, data=None, device=torch.device("cpu"))
    m.finetune(model, ctx)
    return model, calls, ctx.extras["adtn"], originals, moved


def test_backward_order_replaces_last_layer_first_and_refits_to_current_weights():
    model, calls, extras, originals, moved = _staged_run("backward", 2)
    assert calls == [({"fc1": False, "fc2": True}, 1), ({"fc1": True, "fc2": True}, 1)]
    assert [s["layer"] for s in extras["stages"]] == ["fc2", "fc1"] and extras["epochs_total"] == 2
    w = model.fc1.effective_weight().detach()
    assert torch.allclose(w, moved, atol=1e-4)  # fitted to the fine-tuned dense weight
    assert extras["stages"][1]["prefit_to"] == "fine-tuned"


def test_forward_order_splits_one_epoch_over_two_stages():
    model, calls, extras, originals, moved = _staged_run("forward", 1)
    assert calls == [({"fc1": True, "fc2": False}, 0.5), ({"fc1": True, "fc2": True}, 0.5)]
    assert extras["epochs_total"] == 1
    # fc1 went first: it keeps its pre-fit to the original weight
    assert torch.allclose(model.fc1.effective_weight().detach(), originals["fc1"].weight, atol=1e-4)


def test_all_order_trains_once():
    model, calls, extras, originals, moved = _staged_run("all", 3)
    assert calls == [({"fc1": True, "fc2": True}, 3)]
    assert extras["epochs_total"] == 3
