"""The ``adtn`` method (methods/adtn/): sizes, the layer wrapper (caching, conv semantics,
state_dict), allocation notes and the staged backward/forward/all fine-tuning."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.adtn.generator import param_count
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


LAYERS = [nn.Linear(30, 20), nn.Linear(30, 20, bias=False), nn.Conv2d(3, 8, 3), nn.Conv2d(6, 16, 5, bias=False),
          nn.Linear(196, 8), nn.Linear(196, 8, bias=False)]


@pytest.mark.parametrize("layout", ["padded", "rowmajor", "interleaved"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: f"{type(l).__name__}{tuple(l.weight.shape)}-bias{l.bias is not None}")
def test_layer_params_equal_module_and_formula(layer, layout):
    m = get_method("adtn", layout=layout, **FAST)
    assert m.knob_name == "depth"
    assert m.knobs(layer) == list(range(1, 9))
    for depth in (1, 2, 3):
        built = m.factorize(layer, depth)
        bias = layer.bias.numel() if layer.bias is not None else 0
        q = (layer.weight.numel() - 1).bit_length()
        assert m.layer_params(layer, depth) == m.module_params(built) == param_count(q, depth) + bias
        assert built.effective_weight().shape == layer.weight.shape
        assert built.tnbench_info["depth"] == depth and built.tnbench_info["sites"] == q
        assert built.tnbench_info["layout_requested"] == layout
        assert 0 <= built.tnbench_info["prefit_rel_error"] <= 1.5
        info = built.tnbench_info  # default grad_scale: plain gradients, no gain measured
        assert info["grad_scale"] == 1.0 and info["sgd_gain"] is None
        assert float(built.generator.grad_scale) == 1.0


def test_grad_scale_sqrt_uses_the_measured_gain():
    layer = nn.Linear(196, 8)  # padded layout: the gain is measured on the real entries only
    built = get_method("adtn", grad_scale="sqrt", **FAST).factorize(layer, 2)
    info = built.tnbench_info
    assert info["layout"] == "padded" and info["sgd_gain"] > 0
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
    with pytest.raises(ValueError):
        get_method("adtn", layout="columnmajor")
    with pytest.raises(ValueError):
        get_method("adtn", prefit_schedule="linear")
    with pytest.raises(ValueError):
        get_method("adtn", input_hw=[28])
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
    # the rank-1 start fits these Kronecker weights exactly in 20 steps: the stages are what is tested
    m = get_method("adtn", order=order, prefit_steps=20, prefit_polish=0, init="rank1", init_noise=0.0)
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


# --- weight layout ----------------------------------------------------------------------------
def test_plan_layout_cases():
    from methods.adtn.layout import image_axes, plan_layout

    fc1 = plan_layout((256, 784), 18, 2, "padded", (256, *image_axes(784, "auto")))
    assert (fc1.kind, fc1.blocks, fc1.padded) == ("padded", (256, 28, 28), (256, 32, 32))
    no_split = plan_layout((256, 784), 18, 2, "padded")
    assert (no_split.blocks, no_split.padded) == ((256, 784), (256, 1024))
    assert image_axes(3072, [32, 32]) == (3, 32, 32) and image_axes(784, None) is None
    assert image_axes(120, "auto") is None and image_axes(100, [28, 28]) is None
    conv = plan_layout((16, 6, 5, 5), 12, 2)  # 4+3+3+3 = 13 sites > 12: kh x kw stay one block
    assert (conv.blocks, conv.padded) == ((16, 6, 25), (16, 8, 32))
    assert plan_layout((8, 4, 4, 4), 9, 2).blocks == (8, 4, 4, 4)
    fallback = plan_layout((5, 5), 5, 2)  # 3+3 sites > Q = 5: only the single block keeps Q
    assert (fallback.kind, fallback.blocks, fallback.padded) == ("rowmajor", (25,), (32,))
    assert plan_layout((256, 784), 18, 2, "rowmajor").padded == (2 ** 18,)
    assert plan_layout((8, 3), 3, 3).padded == (9, 3)  # d = 3: 8 -> 9 (2 sites) + 3 (1 site) = Q
    assert plan_layout((10, 10), 5, 3).kind == "rowmajor"  # 10 -> 27 twice: 6 sites > Q = 5


@pytest.mark.parametrize("make_layer,blocks,padded", [
    (lambda: nn.Linear(196, 6), (6, 14, 14), (8, 16, 16)),  # 14 x 14 image fan-in
    (lambda: nn.Conv2d(6, 16, 5), (16, 6, 25), (16, 8, 32)),
])
def test_layout_round_trip(make_layer, blocks, padded):
    """The layer's weight is the generated tensor viewed as the padded block shape and cropped,
    for a generic generated tensor and for a known (Kronecker) one set through the rank-1 start."""
    torch.manual_seed(0)
    layer = make_layer()
    built = get_method("adtn", **FAST).factorize(layer, 1)
    info = built.tnbench_info
    assert info["layout"] == "padded" and tuple(info["layout_blocks"]) == blocks
    assert tuple(info["layout_padded"]) == padded
    gen = built.generator
    crop = tuple(slice(0, b) for b in blocks)
    with torch.no_grad():
        full = gen.full()
        assert torch.equal(built.effective_weight(), full.view(padded)[crop].reshape(layer.weight.shape))
        q = gen.q
        known = torch.ones(1)
        for n in [4] * (q // 2) + [2] * (q % 2):
            known = torch.kron(known, torch.rand(n) + 0.5)
        gen.init_rank1_(known, noise=0.0)
        assert torch.allclose(gen.full(), known, rtol=1e-4, atol=1e-6)
        w = built.effective_weight()
        assert torch.allclose(w, known.view(padded)[crop].reshape(layer.weight.shape), rtol=1e-4, atol=1e-6)
    if isinstance(layer, nn.Linear):  # explicit: W[o, 14 i + j] = T[o, i, j] on the 16 x 16 grid
        for o, i, j in [(0, 0, 0), (5, 13, 13), (3, 7, 2)]:
            assert torch.allclose(w[o, 14 * i + j], known[o * 256 + 16 * i + j], rtol=1e-4)


def test_padded_and_rowmajor_have_the_same_q_and_params():
    for layer in (nn.Linear(784, 32), nn.Conv2d(16, 120, 5), nn.Linear(100, 12), nn.Linear(5, 5)):
        built = {k: get_method("adtn", layout=k, **FAST).factorize(layer, 2) for k in ("padded", "rowmajor")}
        assert built["padded"].generator.q == built["rowmajor"].generator.q
        assert (get_method("adtn", layout="padded").layer_params(layer, 2)
                == get_method("adtn", layout="rowmajor").layer_params(layer, 2)
                == sum(p.numel() for p in built["padded"].parameters())
                == sum(p.numel() for p in built["rowmajor"].parameters()))
        assert built["rowmajor"].tnbench_info["layout"] == "rowmajor"
    assert built["padded"].tnbench_info["layout"] == "rowmajor"  # Linear(5, 5): padding would raise Q
    assert built["padded"].tnbench_info["layout_requested"] == "padded"


def test_input_hw_option_splits_the_fan_in():
    layer = nn.Linear(2 * 4 * 4, 4)  # 4 x 32 = 128, Q = 7; (4)(2)(4)(4): 2+1+2+2 = 7
    assert get_method("adtn", **FAST).factorize(layer, 1).tnbench_info["layout_blocks"] == [4, 32]  # 32: no square
    given = get_method("adtn", input_hw=[4, 4], **FAST).factorize(layer, 1).tnbench_info
    assert given["layout_blocks"] == [4, 2, 4, 4] and given["layout"] == "padded"
    # 4 x (3 x 6 x 6): every split of the fan-in needs 10 sites > Q = 9, so the fan-in stays whole
    layer = nn.Linear(3 * 6 * 6, 4, bias=False)
    given = get_method("adtn", input_hw=[6, 6], **FAST).factorize(layer, 1).tnbench_info
    assert given["sites"] == 9 and given["layout_blocks"] == [4, 108] and given["layout_padded"] == [4, 128]


def test_interleaved_layout_explicit_entries():
    """W[o, i] is the generated entry whose sites spell o's and i's digits alternately:
    a (16, 8) weight on 7 sites reads T[o0 i0 o1 i1 o2 i2 o3]."""
    from methods.adtn.layout import interleave_perm, plan_layout

    assert interleave_perm((3, 2)) == (0, 2, 4, 1, 3)
    layout = plan_layout((16, 8), 7, 2, "interleaved")
    assert (layout.kind, layout.blocks, layout.padded) == ("interleaved", (16, 8), (16, 8))
    full = torch.randn(2 ** 7, dtype=torch.float64)
    w = layout.read(full)
    for o in (0, 5, 9, 15):
        for i in (0, 3, 6, 7):
            od, idg = [(o >> (3 - k)) & 1 for k in range(4)], [(i >> (2 - k)) & 1 for k in range(3)]
            sites = [od[0], idg[0], od[1], idg[1], od[2], idg[2], od[3]]
            assert w[o, i] == full[int("".join(map(str, sites)), 2)]
    for shape, q in [((16, 8), 7), ((10, 3, 3, 3), 9), ((12, 6), 7)]:  # round trip, padding masked
        layout = plan_layout(shape, q, 2, "interleaved")
        weight = torch.randn(shape, dtype=torch.float64)
        assert layout.kind == "interleaved"
        assert torch.equal(layout.read(layout.embed(weight)), weight)
        assert int(layout.mask().sum()) == weight.numel()
    assert plan_layout((12, 5), 6, 2, "interleaved").kind == "rowmajor"  # 4 + 3 digits > Q = 6



def test_interleaved_read_gradient_is_the_permutes():
    """The gather that reads an interleaved weight (fast path) has the gradient of the plain
    permute-and-crop: every real entry gets its weight's gradient, padding entries zero."""
    from methods.adtn.layout import plan_layout

    layout = plan_layout((12, 6), 7, 2, "interleaved")  # 16 x 8 padded: 32 padding entries
    assert layout.blocks != layout.padded
    full = torch.randn(2 ** 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(12, 6, dtype=torch.float64)
    fast, = torch.autograd.grad((layout.read(full) * upstream).sum(), full)
    plain, = torch.autograd.grad((layout._strided_read(full) * upstream).sum(), full)
    assert torch.equal(fast, plain)
    assert int((fast != 0).sum()) == 72 and torch.equal(fast[~layout.mask()], torch.zeros(56, dtype=torch.float64))

@pytest.mark.parametrize("layout,rank", [("padded", 4), ("rowmajor", 4), ("interleaved", 32)])
def test_depth1_rank_across_the_output_input_cut(layout, rank):
    """At depth 1 one gate crosses the out|in cut in the block layouts: rank <= 4. Interleaved,
    the first sublayer is a Kronecker product of 2 x 2 matrices: full rank (why cifar10-headline
    lists adtn-interleaved)."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 64).double()
    built = get_method("adtn", layout=layout, **FAST).factorize(layer, 1)
    with torch.no_grad():
        w = built.effective_weight()
    assert built.tnbench_info["layout"] == layout
    assert int(torch.linalg.matrix_rank(w)) == rank
