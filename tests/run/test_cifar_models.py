"""CIFAR networks: layer names, exact parameter counts by formula, shapes, init, train mode."""
import math

import pytest
import torch
from torch import nn

from bench.models import build_network
from bench.models.cifar import VGG16_CFG

SHAPE = (3, 32, 32)


def conv_bn(c_in, c_out, k):
    return c_in * c_out * k * k + c_out + 2 * c_out  # weight + bias + BN scale/shift


def head(in_features, classes):
    return (in_features * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * classes + classes)


def expected_params(name, classes):
    if name == "vgg16":
        total, c = 0, 3
        for v in VGG16_CFG:
            if v != "M":
                total, c = total + conv_bn(c, v, 3), v
        return total + head(512, classes)
    k1 = 5 if name == "alexnet" else 3
    convs = [(3, 96, k1), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    return sum(conv_bn(*c) for c in convs) + head(256 * 2 * 2, classes)


VGG_CONVS = ["features.0", "features.3", "features.7", "features.10", "features.14", "features.17",
             "features.20", "features.24", "features.27", "features.30", "features.34",
             "features.37", "features.40"]
ALEX_CONVS = ["features.0", "features.4", "features.8", "features.11", "features.14"]
LINEARS = ["classifier.0", "classifier.3", "classifier.6"]
LAYERS = {"vgg16": VGG_CONVS + LINEARS, "alexnet": ALEX_CONVS + LINEARS, "zfnet": ALEX_CONVS + LINEARS}


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {(n, 10): build_network(n, SHAPE, 10) for n in LAYERS}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("classes", [10, 100])
def test_param_counts_names_and_shapes(nets, name, classes):
    model = nets[(name, 10)] if classes == 10 else build_network(name, SHAPE, classes)
    assert sum(p.numel() for p in model.parameters()) == expected_params(name, classes)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names == LAYERS[name]
    assert model.get_submodule("classifier.6").out_features == classes
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, *SHAPE)).shape == (3, classes)


def test_vgg16_hidden_linears_are_powers_of_two(nets):
    model = nets[("vgg16", 10)]
    assert model.get_submodule("classifier.0").weight.numel() == 2 ** 21
    assert model.get_submodule("classifier.3").weight.numel() == 2 ** 24


def test_zfnet_differs_from_alexnet_in_first_layers(nets):
    a, z = nets[("alexnet", 10)], nets[("zfnet", 10)]
    a1, z1 = a.get_submodule("features.0"), z.get_submodule("features.0")
    assert (a1.kernel_size, a1.stride) == ((5, 5), (2, 2))
    assert (z1.kernel_size, z1.stride) == ((3, 3), (1, 1))
    assert a.get_submodule("features.4").stride == (1, 1)
    assert z.get_submodule("features.4").stride == (2, 2)


def test_init_kaiming_convs_small_linears(nets):
    model = nets[("vgg16", 10)]
    conv = model.get_submodule("features.40")
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0
    assert model.get_submodule("classifier.3").weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_train_mode_forward_backward_batch_of_two(nets, name):
    model = nets[(name, 10)]
    model.train()
    torch.manual_seed(1)
    out = model(torch.randn(2, *SHAPE))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    model.zero_grad()
    nn.functional.cross_entropy(out, torch.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.zero_grad(set_to_none=True)
    # dropout is active in train mode: two forwards of the same input differ
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="vgg16.*too small"):
        build_network("vgg16", (3, 16, 16), 10)


def test_perf_train_runs_and_reports(capsys):
    from bench.perf.train import main

    assert main(["--device", "cpu", "--networks", "zfnet", "--batch-size", "4", "--steps", "1",
                 "--warmup", "0", "--precisions", "none"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out
    row = [line for line in out.splitlines() if line.startswith("zfnet")][0].split()
    assert int(row[1].replace(",", "")) == expected_params("zfnet", 10)
    assert all(float(v.replace(",", "")) > 0 for v in row[2:5])


def test_perf_train_compares_the_bare_loop_and_the_projects_loop_per_precision(capsys):
    from bench.perf.train import main

    assert main(["--device", "cpu", "--networks", "zfnet", "--batch-size", "4", "--steps", "1",
                 "--warmup", "1", "--precisions", "fp32,bf16"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("zfnet")]
    assert [r[1] for r in rows] == ["fp32", "bf16"]
    assert all(float(r[2].replace(",", "")) > 0 and float(r[3].replace(",", "")) > 0 for r in rows)
