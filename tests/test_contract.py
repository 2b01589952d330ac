"""The compressor contract, checked for every registered method (driven by the registry, so a
new method is covered without editing this file): on Linear and Conv2d, with and without bias,
``layer_params == module_params(factorize(...))``, knobs ascend in size, the module computes
``effective_weight()`` applied as a dense layer, and it runs on the layer's device and dtype."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.compressor import CompressionError
from bench.registry import get_method, method_names

LAYERS = {
    "linear": lambda: nn.Linear(48, 20),
    "linear-nobias": lambda: nn.Linear(48, 20, bias=False),
    "conv": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "conv-nobias": lambda: nn.Conv2d(4, 6, 3, padding=1, bias=False),
}
#: options that keep slow methods quick on these tiny layers (sizes and counts do not depend on them)
FAST = {"adtn": {"prefit_steps": 5, "prefit_polish": 0}}


def _method(name: str):
    return get_method(name, **FAST.get(name, {}))


def _cases():
    for name in method_names():
        for kind in LAYERS:
            yield pytest.param(name, kind, id=f"{name}-{kind}")


def _knobs_or_skip(method, layer):
    try:
        knobs = list(method.knobs(layer))
    except CompressionError as e:  # the method does not take this layer kind (NN-BCD: Linear only)
        pytest.skip(f"{method.name} refuses {type(layer).__name__}: {e}")
    assert knobs, f"{method.name} offers no knob for {layer}"
    return knobs


def _sample(knobs: list) -> list:
    """Smallest, a middle and the largest knob: enough to catch a wrong size model."""
    return list(dict.fromkeys([knobs[0], knobs[len(knobs) // 2], knobs[-1]]))


def _dense_forward(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor, bias) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


def _input(layer: nn.Module) -> torch.Tensor:
    shape = (layer.in_features,) if isinstance(layer, nn.Linear) else (layer.in_channels, 7, 5)
    return torch.randn(3, *shape, dtype=torch.float64)


@pytest.mark.parametrize("name, kind", list(_cases()))
def test_contract(name, kind):
    torch.manual_seed(0)
    layer = LAYERS[kind]().double()
    method = _method(name)
    knobs = _knobs_or_skip(method, layer)
    sizes = [method.layer_params(layer, k) for k in knobs]
    assert sizes == sorted(sizes), f"{name}: knobs must ascend in size, got sizes {sizes[:10]}..."
    x = _input(layer)
    for knob in _sample(knobs):
        module = method.factorize(layer, knob)
        assert method.module_params(module) == method.layer_params(layer, knob), (name, kind, knob)
        module.eval()
        with torch.no_grad():
            w = module.effective_weight() if hasattr(module, "effective_weight") else module.weight
            assert w.shape == layer.weight.shape
            assert w.dtype == layer.weight.dtype and w.device == layer.weight.device
            expected = _dense_forward(layer, w, x, layer.bias)  # replacements start from the layer's bias
            out = module(x)
        assert out.dtype == torch.float64 and out.device == x.device
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-8)
        _check_scale_weight(module, layer, w, x)


def _check_scale_weight(module: nn.Module, layer: nn.Module, w: torch.Tensor, x: torch.Tensor) -> None:
    """``scale_weight_`` (bias calibration's lift) scales the weight term only, adds no parameter."""
    if not hasattr(module, "scale_weight_"):
        return  # the identity replacement of ``dense``: bias calibration leaves such a layer unscaled
    before = sum(p.numel() for p in module.parameters())
    bias = None if module.bias is None else module.bias.detach().clone()
    module.scale_weight_(-2.5)
    with torch.no_grad():
        torch.testing.assert_close(module.effective_weight(), -2.5 * w, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(module(x), _dense_forward(layer, -2.5 * w, x, layer.bias), rtol=1e-6, atol=1e-8)
    assert sum(p.numel() for p in module.parameters()) == before
    if bias is not None:
        assert torch.equal(module.bias, bias)


def test_every_method_is_covered():
    """The registry drives the contract test: the built-in methods are all there."""
    assert {"adtn", "alds", "alds-svd", "cp", "dense", "nnbcd-prune", "nnbcd-tt", "prune", "svd", "tt",
            "tucker"} <= set(method_names())
