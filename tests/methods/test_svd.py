"""svd and dense: lossless at full rank, exact parameter counts."""
import pytest
import torch
from torch import nn

from bench.compressor import effective_weight
from bench.registry import get_method

SHAPES = [
    nn.Linear(784, 256), nn.Linear(256, 10), nn.Linear(120, 84), nn.Linear(84, 10, bias=False),
    nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(6, 16, 5),
    nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
]


def _input(layer, batch=3):
    if isinstance(layer, nn.Linear):
        return torch.randn(batch, layer.in_features, dtype=torch.float64)
    return torch.randn(batch, layer.in_channels, 12, 12, dtype=torch.float64)


@pytest.mark.parametrize("layer", SHAPES, ids=str)
def test_svd_full_rank_reproduces_layer(layer):
    layer = layer.double()
    svd = get_method("svd")
    full = svd.knobs(layer)[-1]
    new = svd.factorize(layer, full)
    x = _input(layer)
    ref = layer(x)
    assert ((new(x) - ref).norm() / ref.norm()).item() < 1e-5
    assert torch.allclose(effective_weight(new), layer.weight, atol=1e-10)


@pytest.mark.parametrize("name", ["svd", "dense"])
@pytest.mark.parametrize("layer", SHAPES, ids=str)
def test_layer_params_equal_module_params(name, layer):
    method = get_method(name)
    for knob in method.knobs(layer)[:: max(1, len(method.knobs(layer)) // 7)]:
        module = method.factorize(layer, knob)
        assert method.layer_params(layer, knob) == sum(p.numel() for p in module.parameters())


def test_svd_rank_out_of_range_is_an_error():
    from bench.compressor import CompressionError

    with pytest.raises(CompressionError, match="outside 1..10"):
        get_method("svd").factorize(nn.Linear(20, 10), 11)


def test_svd_truncation_error_is_eckart_young():
    torch.manual_seed(0)
    layer = nn.Linear(40, 30).double()
    s = torch.linalg.svdvals(layer.weight.detach())
    new = get_method("svd").factorize(layer, 5)
    err = (effective_weight(new) - layer.weight).norm()
    assert torch.isclose(err, s[5:].norm(), rtol=1e-8)
