"""CIFAR-scale networks: VGG-16 (as in the ADTN paper) and AlexNet / ZFNet adapted to 32x32.

All three are ``features`` (an ``nn.Sequential`` of conv/BN/ReLU/pool) followed by the same
``classifier`` layout ``[Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear]``, so the
layers a suite compresses are named ``features.N`` (convs) and ``classifier.0`` /
``classifier.3`` / ``classifier.6`` (linears), torchvision style. docs/NETWORKS.md lists every
name with its parameter count.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.registry import register_network

#: VGG-16 (configuration "D" of Simonyan & Zisserman, arXiv 1409.1556); "M" is a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

HIDDEN = 4096
DROPOUT = 0.5


def _classifier(in_features: int, num_classes: int, hidden: int = HIDDEN) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(DROPOUT),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(DROPOUT),
        nn.Linear(hidden, num_classes))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int], name: str) -> int:
    """Feature count after ``features`` for one input (a dry run in eval mode, no grad)."""
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *input_shape))
    except RuntimeError as e:
        raise ValueError(f"{name}: input shape {tuple(input_shape)} is too small for its "
                         f"pooling stages (needs at least 32x32): {e}") from None
    finally:
        features.train(was_training)
    return math.prod(out.shape[1:])


def _init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, unit BN, N(0, 0.01) linears, zero biases —
    the initialisation torchvision uses for its VGG models."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class CifarNet(nn.Module):
    """``features`` -> flatten -> ``classifier``; the common shape of the three networks."""

    def __init__(self, features: nn.Sequential, input_shape, num_classes: int, name: str):
        super().__init__()
        self.features = features
        self.classifier = _classifier(_flat_size(features, tuple(input_shape), name), num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg_features(cfg, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += _conv_bn(c, v, 3)
            c = v
    return nn.Sequential(*layers)


def vgg16(input_shape, num_classes: int) -> CifarNet:
    """VGG-16 with BatchNorm for CIFAR: 13 conv3x3 layers, 5 max-pools (32x32 -> 1x1), then
    512 -> 4096 -> 4096 -> classes. The two hidden linears hold 2^21 and 2^24 weights."""
    return CifarNet(vgg_features(VGG16_CFG, input_shape[0]), input_shape, num_classes, "vgg16")


def _alex_like(in_channels: int, k1: int, s1: int, s2: int) -> nn.Sequential:
    """AlexNet's five convs (96, 256, 384, 384, 256 channels; kernels k1, 5, 3, 3, 3) with
    BatchNorm, and its overlapping 3x3/2 max-pools after conv1, conv2 and conv5."""
    def pool() -> nn.Module:
        return nn.MaxPool2d(3, stride=2, padding=1)

    return nn.Sequential(
        *_conv_bn(in_channels, 96, k1, s1), pool(),
        *_conv_bn(96, 256, 5, s2), pool(),
        *_conv_bn(256, 384, 3), *_conv_bn(384, 384, 3), *_conv_bn(384, 256, 3), pool())


def alexnet(input_shape, num_classes: int) -> CifarNet:
    """AlexNet (Krizhevsky et al. 2012) for 32x32: conv1 5x5 stride 2 instead of 11x11
    stride 4 (the input is 7x smaller), so 32 -> 16 -> pool 8 -> 8 -> pool 4 -> pool 2; a
    256*2*2 = 1024 -> 4096 -> 4096 -> classes head."""
    return CifarNet(_alex_like(input_shape[0], k1=5, s1=2, s2=1), input_shape, num_classes, "alexnet")


def zfnet(input_shape, num_classes: int) -> CifarNet:
    """ZFNet (Zeiler & Fergus 2014, arXiv 1311.2901) for 32x32: AlexNet with a smaller
    first-layer kernel and stride (ImageNet 11x11/4 -> 7x7/2; here 5x5/2 -> 3x3/1) and
    stride 2 in conv2, so 32 -> pool 16 -> 8 -> pool 4 -> pool 2; the same head."""
    return CifarNet(_alex_like(input_shape[0], k1=3, s1=1, s2=2), input_shape, num_classes, "zfnet")


register_network("vgg16")(vgg16)
register_network("alexnet")(alexnet)
register_network("zfnet")(zfnet)
