"""One ADTN fine-tuning step on VGG-16, in the CIFAR suites' two settings, on the CPU or a GPU.

``python -m bench.perf adtn_step [--setting headline|conv] [--layout interleaved] [--depth 1]``

``headline``: classifier.0 and classifier.3 generated (cifar10-headline), the step runs the
classifier on a batch of 512 cached 512-feature vectors. ``conv``: features.34/37/40 generated
(cifar10-conv), the step runs the last conv block and the classifier on 512 maps of 512 x 2 x 2.
Each step = weight generation + forward + backward + SGD, under the suites' precision (bf16
autocast where native). Prints the median and minimum over ``--steps`` steps, and whether the
heap keeps freed memory (``bench.cpu_memory``; ``TNBENCH_KEEP_FREED_MEMORY=0`` for glibc's
defaults), so ``farm-bench`` can pair the two settings as whole commands. ``--direct-conv``:
the generated convs as ``F.conv2d`` even on the 2x2 maps (the path before
``bench.layers.ConvSpec.as_linear``), to pair the two paths.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from bench.cpu_memory import keep_freed_memory
from bench.layers import direct_convs
from bench.models import build_network
from bench.precision import autocast, resolve
from bench.registry import get_method
from bench.train import resolve_device

SETTINGS = {
    "headline": (["classifier.0", "classifier.3"], "classifier", (512,)),
    "conv": (["features.34", "features.37", "features.40"], "features.34", (512, 2, 2)),
}


def suffix_of(model: nn.Module, first: str) -> nn.Module:
    """The network from module ``first`` on (VGG-16: the rest of ``features``, then classifier)."""
    if first == "classifier":
        return model.classifier
    start = int(first.split(".")[1])
    return nn.Sequential(*list(model.features)[start:], nn.Flatten(), model.classifier)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf adtn_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="headline")
    ap.add_argument("--layout", default="interleaved", help="padded, rowmajor or interleaved")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--direct-conv", action="store_true", help="F.conv2d on every map (no as_linear)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if device.type == "cpu" else False
    targets, first, feature_shape = SETTINGS[args.setting]
    torch.manual_seed(0)
    model = build_network("vgg16", (3, 32, 32), 10)
    method = get_method("adtn", layout=args.layout, prefit_steps=0, prefit_polish=0)
    for name in targets:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent)
        holder._modules[child] = method.factorize(holder._modules[child], args.depth)
    net = suffix_of(model, first).to(device).train()
    precision = resolve("auto", device)
    x = torch.randn(args.batch, *feature_shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> float:
        t0 = time.perf_counter()
        with autocast(device, precision):
            loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    with direct_convs() if args.direct_conv else contextlib.nullcontext():
        step()  # warm-up: first allocations, kernel choice
        times = [step() for _ in range(args.steps)]
    print(f"adtn step, {args.setting} ({', '.join(targets)}), layout {args.layout}, depth {args.depth}, "
          f"batch {args.batch}, {precision}, {device} x{torch.get_num_threads()} threads, heap keeps freed: {kept}, "
          f"{'direct' if args.direct_conv else 'default'} conv: "
          f"median {1e3 * statistics.median(times):.0f} ms, min {1e3 * min(times):.0f} ms")
    return 0
