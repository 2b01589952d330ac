"""The compressor contract (``bench.testing.check_compressor``), checked for every registered
method (driven by the registry, so a new method is covered without editing this file), and the
check itself: it catches a method that breaks each rule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.layers import FactorizedLayer
from bench.registry import get_method, method_names
from bench.testing import LAYERS, ContractViolation, check_compressor, check_layer_kind

#: options that keep slow methods quick on these tiny layers (sizes and counts do not depend on them)
FAST = {"adtn": {"prefit_steps": 5, "prefit_polish": 0}}
#: options that build other layer classes, checked like methods of their own
VARIANTS = {"tucker-paired": ("tucker", {"layout": "paired"}), "cp-paired": ("cp", {"layout": "paired"})}


def _cases():
    variants = {name: (name, FAST.get(name, {})) for name in method_names()} | VARIANTS
    for label, (name, options) in variants.items():
        for kind in LAYERS:
            yield pytest.param(name, options, kind, id=f"{label}-{kind}")


@pytest.mark.parametrize("name, options, kind", list(_cases()))
def test_contract(name, options, kind):
    result = check_layer_kind(get_method(name, **options), kind)
    if result != "ok":
        pytest.skip(f"{name} {result}")


def test_every_method_is_covered():
    """The registry drives the contract test: the built-in methods are all there."""
    assert {"adtn", "alds", "alds-svd", "cp", "dense", "nnbcd-prune", "nnbcd-tt", "prune", "svd", "tt",
            "tucker"} <= set(method_names())


class _Scaled(FactorizedLayer):
    """A rank-1 stand-in whose faults the tests below switch on one at a time."""

    def __init__(self, layer, fault=None):
        super().__init__(layer)
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        self.u = nn.Parameter(w[:, :1].clone())
        self.v = nn.Parameter(torch.ones(1, w.shape[1], dtype=w.dtype))
        self.fault = fault

    def effective_weight(self):
        w = (self.u @ self.v).reshape(self.weight_shape)
        return w.float() if self.fault == "dtype" else w

    def forward(self, x):
        y = super().forward(x)
        return y + 1 if self.fault == "forward" else y

    def weight_factor(self):
        return self.v if self.fault == "scale" else self.u  # v scaled as well below: scaled twice

    def scale_weight_(self, factor):
        super().scale_weight_(factor)
        if self.fault == "scale":
            self.u.data.mul_(factor)


class _Method:
    name = "faulty"

    def __init__(self, fault=None, params_off=0):
        self.fault, self.params_off = fault, params_off

    def knobs(self, layer):
        return [1]

    def layer_params(self, layer, knob):
        w = layer.weight
        return w.shape[0] + w[0].numel() + (0 if layer.bias is None else layer.bias.numel()) + self.params_off

    def factorize(self, layer, knob):
        return _Scaled(layer, self.fault)

    def module_params(self, module):
        return sum(p.numel() for p in module.parameters())


def test_a_well_behaved_plugin_layer_passes():
    assert check_compressor(_Method()) == {kind: "ok" for kind in LAYERS}


@pytest.mark.parametrize("method, says", [
    (_Method(params_off=1), "parameters, layer_params says"),
    (_Method("dtype"), "effective_weight() is torch.float32"),
    (_Method("forward"), "forward differs from effective_weight()"),
    (_Method("scale"), "scale_weight_(-2.5) does not multiply"),
])
def test_each_breach_of_the_contract_is_named(method, says):
    with pytest.raises(ContractViolation, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_compressor(method)


def test_the_readme_plugin_example_keeps_the_contract(tmp_path, capsys):
    """The README's "Adding a method" example, as a user would save it, passes --check-plugin."""
    import re
    from pathlib import Path

    from bench.cli import main

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"<!-- plugin-example:begin -->\n```python\n(.*?)```\n<!-- plugin-example:end -->", readme, re.S)
    assert block, "README lost its plugin example markers"
    code = block.group(1)
    assert sum(1 for line in code.splitlines() if line.strip()) <= 30  # "in 30 lines of code"
    path = tmp_path / "kron_readme.py"
    path.write_text(code.replace('register_method("kron")', 'register_method("kron-readme")'))
    assert main(["--check-plugin", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kron-readme: keeps the contract (linear ok, linear-nobias ok, conv ok, conv-nobias ok)")


def test_check_plugin_names_a_broken_method_and_exits_1(tmp_path, capsys):
    from bench.cli import main

    path = tmp_path / "broken_plugin.py"
    path.write_text(
        "from bench.registry import register_method\n"
        "from tests.api.test_contract import _Method\n"
        "register_method('broken-count')(type('Broken', (_Method,), {'__init__': lambda self: _Method.__init__(self, params_off=3)}))\n")
    assert main(["--check-plugin", str(path)]) == 1
    assert "broken-count: breaks the contract:" in capsys.readouterr().out
    empty = tmp_path / "empty_plugin.py"
    empty.write_text("x = 1\n")
    assert main(["--check-plugin", str(empty)]) == 2
    assert "registers no method" in capsys.readouterr().err
