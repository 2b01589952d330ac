"""Which forward a factorised Linear takes (contract the input through the factors, or form the
matrix) and that both give the same output; CP's paired matrix formed from two balanced halves."""
import torch
import torch.nn as nn

from bench.registry import get_method
from methods._tensorize import CHAIN_FLOP_COST, from_paired
from methods.cp import khatri_rao


def _paths(layer, x):
    """(output, which path ran) of one forward."""
    ran = []
    contract, matrix = layer.contract, layer.matrix
    layer.contract = lambda x2: ran.append("chain") or contract(x2)
    layer.matrix = lambda: ran.append("formed") or matrix()
    y = layer(x)
    return y, ran


def test_tt_contracts_only_where_the_chain_is_cheaper_even_memory_bound():
    torch.manual_seed(0)
    lin = nn.Linear(625, 512).double()  # modes (5, 5, 5, 5) x (4, 4, 8, 4)-ish, big enough to contract
    x = torch.randn(64, 625, dtype=torch.float64)
    tt = get_method("tt")
    seen = {}
    for rank in (1, 8):
        layer = tt.factorize(lin, rank).double()
        y, ran = _paths(layer, x)
        ratio = (layer._form_flops + 64 * layer.m * layer.n) / (64 * layer._contract_flops)
        seen[rank] = (list(ran), ratio)
        assert ran == (["chain"] if ratio > CHAIN_FLOP_COST else ["formed"])
        dense = nn.functional.linear(x, layer.effective_weight().reshape(512, 625), layer.bias)
        assert torch.allclose(y, dense, rtol=1e-10, atol=1e-10)
    assert seen[1][0] == ["chain"] and seen[8][0] == ["formed"]
    assert 1 < seen[8][1] < CHAIN_FLOP_COST  # fewer flops, still formed: the rule, not the flop count


def test_cp_paired_matrix_from_balanced_halves_is_the_sequential_sum():
    torch.manual_seed(0)
    lin = nn.Linear(256, 512).double()
    cp = get_method("cp", layout="paired")
    for rank in (1, 7, 40):
        layer = cp.factorize(lin, rank).double()
        *rest, last = layer.factors
        sequential = from_paired(khatri_rao(rest) @ last.t(), layer.out_modes, layer.in_modes)
        assert 1 <= layer._half < len(layer.factors)
        assert torch.allclose(layer.effective_weight(), sequential, rtol=1e-12, atol=1e-12)


# --- a conv on a map no larger than its kernel, as one matrix product -------------------------
CONV_CASES = [  # (conv kwargs, input h, w)
    ({"kernel_size": 3, "padding": 1}, 2, 2),  # VGG-16's last convs on CIFAR
    ({"kernel_size": 3, "padding": 1}, 1, 1),
    ({"kernel_size": 5}, 5, 5),  # LeNet-5's conv3: a 1x1 output
    ({"kernel_size": (3, 2), "padding": (1, 0), "stride": (2, 1)}, 3, 2),
    ({"kernel_size": 3, "padding": 2, "dilation": 2}, 3, 3),
    ({"kernel_size": 4, "padding": "same"}, 3, 2),  # uneven 'same' padding: more on the far side
    ({"kernel_size": 3, "padding": "valid", "bias": False}, 3, 3),
]


def _conv_and_input(kwargs, h, w, channels_last):
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, **kwargs).double()
    x = torch.randn(5, 3, h, w, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    return layer, x


def test_conv_as_one_matrix_product_equals_the_conv_with_its_gradients():
    from bench.layers import ConvSpec

    for kwargs, h, w in CONV_CASES:
        for channels_last in (False, True):
            layer, x = _conv_and_input(kwargs, h, w, channels_last)
            spec = ConvSpec.of(layer)
            assert spec.linear_is_cheaper(x), (kwargs, h, w)
            y = spec.as_linear(x, layer.weight, layer.bias)
            ref = layer(x)
            assert y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-12, atol=1e-12), (kwargs, channels_last)
            g = torch.randn_like(ref)
            grads = torch.autograd.grad(y, [x, layer.weight] + ([layer.bias] if layer.bias is not None else []), g)
            refs = torch.autograd.grad(ref, [x, layer.weight] + ([layer.bias] if layer.bias is not None else []), g)
            for a, b in zip(grads, refs):
                assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (kwargs, channels_last)


def test_conv_takes_the_matrix_product_only_on_maps_no_larger_than_its_kernel():
    from bench.layers import ConvSpec

    spec = ConvSpec.of(nn.Conv2d(3, 4, 3, padding=1))
    assert spec.linear_is_cheaper(torch.zeros(2, 3, 3, 3))  # 9 positions, 9 taps
    assert not spec.linear_is_cheaper(torch.zeros(2, 3, 4, 3))  # 12 positions
    assert not spec.linear_is_cheaper(torch.zeros(3, 2, 2))  # unbatched: the conv
    assert not ConvSpec.of(nn.Conv2d(4, 4, 3, padding=1, groups=2)).linear_is_cheaper(torch.zeros(2, 4, 2, 2))
    assert not ConvSpec.of(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")).linear_is_cheaper(
        torch.zeros(2, 3, 2, 2))


def test_pruned_and_generated_convs_on_small_maps_take_the_matrix_product(monkeypatch):
    from bench.layers import ConvSpec

    calls = []
    as_linear = ConvSpec.as_linear
    monkeypatch.setattr(ConvSpec, "as_linear", lambda self, *a: calls.append(1) or as_linear(self, *a))
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1).double()
    x = torch.randn(4, 8, 2, 2, dtype=torch.float64)
    for name, knob in (("prune", 200), ("adtn", 1)):
        layer = get_method(name).factorize(conv, knob).double()
        calls.clear()
        ref = nn.functional.conv2d(x, layer.effective_weight().reshape(conv.weight.shape), layer.bias, padding=1)
        assert torch.allclose(layer(x), ref, rtol=1e-10, atol=1e-10), name
        assert calls == [1], name


def test_flop_counts_count_a_conv_as_a_conv_whichever_path_runs_it():
    from bench.layers import ConvSpec, direct_convs
    from bench.metrics import forward_flops

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3))
    pruned = nn.Sequential(get_method("prune").factorize(dense[0], 200), *list(dense)[1:])
    x = torch.zeros(2, 8, 2, 2)
    assert ConvSpec.of(dense[0]).linear_is_cheaper(x)
    with direct_convs():
        assert not ConvSpec.of(dense[0]).linear_is_cheaper(x)
    assert ConvSpec.of(dense[0]).linear_is_cheaper(x)  # the context ends, the path is back
    # a masked conv costs the dense conv's flops (pruning's storage is counted elsewhere), not the
    # matrix product's 16/36 of them
    assert forward_flops(pruned, (8, 2, 2), torch.device("cpu")) == forward_flops(dense, (8, 2, 2), torch.device("cpu"))
