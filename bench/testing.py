"""The compressor contract as a check anyone can run on a method, a plugin's included:
``check_compressor(method)`` here, ``run_all.py --check-plugin FILE`` on the command line, and
tests/api/test_contract.py for every registered method.

On a Linear and a Conv2d, with and without bias (float64, CPU), for the smallest, a middle and
the largest knob: the knobs ascend in size; the built module has exactly ``layer_params``
parameters; its ``effective_weight()`` has the layer's shape, dtype and device; its forward is
that weight applied as the dense layer would (starting from the layer's bias); and, where the
module can be rescaled (``scale_weight_``, which bias calibration uses), rescaling multiplies
the weight term only and adds no parameter; and in float32 under bf16 autocast (the mixed
precision CPU and GPU runs train in) forward and backward run and stay finite. A method may refuse a layer kind with
``CompressionError`` (NN-BCD takes Linear layers only), but not every kind.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.layers import COMPRESSIBLE, CompressionError, effective_weight

#: the layers every method is checked on
LAYERS: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(48, 20),
    "linear-nobias": lambda: nn.Linear(48, 20, bias=False),
    "conv": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "conv-nobias": lambda: nn.Conv2d(4, 6, 3, padding=1, bias=False),
}


class ContractViolation(AssertionError):
    """What a method does differently from the contract, in one line."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ContractViolation(what)


def _dense_forward(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor, bias) -> torch.Tensor:
    return layer._conv_forward(x, weight, bias) if isinstance(layer, nn.Conv2d) else F.linear(x, weight, bias)


def _input(layer: nn.Module) -> torch.Tensor:
    shape = (layer.in_features,) if isinstance(layer, nn.Linear) else (layer.in_channels, 7, 5)
    return torch.randn(3, *shape, dtype=torch.float64)


def _sample(knobs: list) -> list:
    """Smallest, a middle and the largest knob: enough to catch a wrong size model."""
    return list(dict.fromkeys([knobs[0], knobs[len(knobs) // 2], knobs[-1]]))


def check_layer_kind(method, kind: str) -> str:
    """Check ``method`` on one of ``LAYERS``; returns 'ok' or 'refused: <why>'; raises
    ``ContractViolation``."""
    torch.manual_seed(0)
    layer = LAYERS[kind]().double()
    name = getattr(method, "name", type(method).__name__)
    try:
        knobs = list(method.knobs(layer))
    except CompressionError as e:
        return f"refused: {e}"
    _require(bool(knobs), f"{name} on {kind}: knobs() offers no knob")
    sizes = [method.layer_params(layer, k) for k in knobs]
    _require(sizes == sorted(sizes), f"{name} on {kind}: knobs must ascend in size, got sizes {sizes[:10]}")
    x = _input(layer)
    for knob in _sample(knobs):
        where = f"{name} on {kind}, knob {knob!r}"
        module = method.factorize(layer, knob)
        have, want = method.module_params(module), method.layer_params(layer, knob)
        _require(have == want, f"{where}: the module has {have} parameters, layer_params says {want}")
        _require(hasattr(module, "effective_weight") or isinstance(module, COMPRESSIBLE),
                 f"{where}: {type(module).__name__} has no effective_weight()")
        module.eval()
        with torch.no_grad():
            w = effective_weight(module)
            _require(w.shape == layer.weight.shape, f"{where}: effective_weight() shape {tuple(w.shape)}, "
                                                    f"the layer's is {tuple(layer.weight.shape)}")
            _require(w.dtype == layer.weight.dtype and w.device == layer.weight.device,
                     f"{where}: effective_weight() is {w.dtype} on {w.device}, the layer float64 on cpu")
            out = module(x)
            expected = _dense_forward(layer, w, x, layer.bias)
        _require(out.dtype == torch.float64 and out.device == x.device, f"{where}: forward returns {out.dtype}")
        _require(torch.allclose(out, expected, rtol=1e-6, atol=1e-8),
                 f"{where}: forward differs from effective_weight() applied as the dense layer with its bias "
                 f"(max abs difference {float((out - expected).abs().max()):.3g})")
        _check_scale_weight(module, layer, w, x, where)
    _check_autocast(method, LAYERS[kind](), _sample(knobs)[-1], f"{name} on {kind}")
    return "ok"


def _check_autocast(method, layer: nn.Module, knob, where: str) -> None:
    """float32 parameters, bf16 autocast, as ``precision: bf16`` trains: a float32 input and a
    bf16 one (the output of an autocast layer before it) both go forward and backward."""
    torch.manual_seed(0)
    module = method.factorize(layer, knob)
    for dtype in (torch.float32, torch.bfloat16):
        x = _input(layer).to(dtype)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = module(x)
            out.float().sum().backward()
        except RuntimeError as e:
            raise ContractViolation(f"{where}, knob {knob!r}: fails under bf16 autocast with a {dtype} input: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        _require(bool(torch.isfinite(out.float()).all()), f"{where}, knob {knob!r}: non-finite output under bf16 autocast")


def _check_scale_weight(module: nn.Module, layer: nn.Module, w: torch.Tensor, x: torch.Tensor, where: str) -> None:
    """``scale_weight_`` (bias calibration's lift) scales the weight term only, adds no parameter."""
    if not hasattr(module, "scale_weight_"):
        return  # calibration then leaves this layer unscaled (and says so in the record)
    before = sum(p.numel() for p in module.parameters())
    bias = None if getattr(module, "bias", None) is None else module.bias.detach().clone()
    try:
        module.scale_weight_(-2.5)
    except NotImplementedError:
        return
    with torch.no_grad():
        _require(torch.allclose(module.effective_weight(), -2.5 * w, rtol=1e-6, atol=1e-9),
                 f"{where}: scale_weight_(-2.5) does not multiply effective_weight() by -2.5")
        _require(torch.allclose(module(x), _dense_forward(layer, -2.5 * w, x, layer.bias), rtol=1e-6, atol=1e-8),
                 f"{where}: after scale_weight_(-2.5) the forward is not the scaled weight plus the same bias")
    _require(sum(p.numel() for p in module.parameters()) == before, f"{where}: scale_weight_ added parameters")
    if bias is not None:
        _require(torch.equal(module.bias, bias), f"{where}: scale_weight_ changed the bias")


def check_compressor(method) -> dict[str, str]:
    """Run the contract on every layer kind; {kind: 'ok' | 'refused: ...'}. Raises
    ``ContractViolation`` on the first breach, or when the method refuses every kind."""
    results = {kind: check_layer_kind(method, kind) for kind in LAYERS}
    name = getattr(method, "name", type(method).__name__)
    _require(any(v == "ok" for v in results.values()), f"{name} refuses every layer kind: {results}")
    return results
