"""Training and evaluation throughput of the CIFAR networks: ``python -m bench.perf train``.

Compares two input pipelines on the current device, each feeding the same SGD training step
(bf16 autocast and channels_last on CUDA, as ``bench.train`` does). ``--precisions fp32,bf16``
instead times, per precision, the bare step loop against the project's own ``bench.train.train``
on the same synthetic data (their ratio is what the project's loop costs):

* ``resident``: the dataset lives on the device, batches are sliced from a device-side
  permutation and augmented there in batch (``bench.augment``) — what ``bench.train`` does;
* ``dataloader``: a plain ``torch.utils.data.DataLoader`` over CPU tensors with per-sample
  crop/flip in ``__getitem__`` (2 workers on CUDA, 0 on CPU), copied to the device per batch.

Data are synthetic (random normal images of CIFAR shape, random labels): throughput does not
depend on the pixel values, and the benchmark needs no dataset on disk.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import AUGMENTATIONS, CROP_PADDING
from bench.cpu_memory import keep_freed_memory
from bench.models import build_network
from bench.perf import sync
from bench import precision as prec
from bench.data import DataSplits
from bench.train import prepare_model, resolve_device, train

SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def _autocast(device: torch.device, precision: str | None = None):
    if precision is not None:
        return prec.autocast(device, prec.resolve(precision, device))
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _to_input(xb: torch.Tensor, device: torch.device, precision: str | None = None) -> torch.Tensor:
    if precision is not None:
        return prec.to_layout(xb, prec.resolve(precision, device) == "bf16")
    return xb.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else xb


class _Step:
    """One SGD step of cross-entropy on a batch (the work both pipelines feed). ``compiled``:
    the forward goes through ``torch.compile`` (the parameters, and so the optimizer, are the
    eager model's)."""

    def __init__(self, model: nn.Module, device: torch.device, compiled: bool = False,
                 precision: str | None = None):
        self.model, self.device, self.precision = model, device, precision
        self.forward = torch.compile(model) if compiled else model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.precision):
            loss = self.loss_fn(self.forward(_to_input(xb, self.device, self.precision)), yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def time_resident(step: _Step, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, warmup: int,
                  augment: str | None = "crop-flip") -> float:
    """Images/s with device-resident data, device permutation and device augmentation
    (``augment`` None: none, as for MNIST)."""
    device = x.device
    gen = torch.Generator(device=device).manual_seed(0)
    aug = AUGMENTATIONS[augment] if augment else (lambda xb, g: xb)
    perm = torch.randperm(len(y), device=device, generator=gen)
    n_batches = len(y) // batch

    def run(k: int, offset: int) -> None:
        for s in range(k):
            idx = perm[((offset + s) % n_batches) * batch:][:batch]
            step(aug(x[idx], gen), y[idx])

    run(warmup, 0)
    sync(device)
    t0 = time.perf_counter()
    run(steps, warmup)
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


class _CpuAugmented(torch.utils.data.Dataset):
    """CPU tensors with per-sample random crop (zero padding) and flip, torchvision style."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        p = CROP_PADDING
        img = F.pad(self.x[i], (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = img[:, dy:dy + SHAPE[1], dx:dx + SHAPE[2]]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.y[i]


def time_dataloader(step: _Step, x_cpu: torch.Tensor, y_cpu: torch.Tensor, batch: int, steps: int,
                    warmup: int, workers: int) -> float:
    """Images/s with a standard DataLoader feeding the device batch by batch."""
    device = step.device
    loader = torch.utils.data.DataLoader(
        _CpuAugmented(x_cpu, y_cpu), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def batches():
        while True:
            yield from loader

    it = batches()
    t0 = None
    for s in range(warmup + steps):
        if s == warmup:
            sync(device)
            t0 = time.perf_counter()
        xb, yb = next(it)
        step(xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def time_eval(model: nn.Module, x: torch.Tensor, batch: int, steps: int, warmup: int) -> float:
    """Images/s of inference (eval mode, same autocast/layout as training)."""
    model.eval()
    device = x.device
    batch = min(batch, len(x))
    n_batches = len(x) // batch
    with _autocast(device):
        for s in range(warmup + steps):
            if s == warmup:
                sync(device)
                t0 = time.perf_counter()
            model(_to_input(x[(s % n_batches) * batch:][:batch], device))
    sync(device)
    model.train()
    return batch * steps / (time.perf_counter() - t0)


def time_project_loop(net: str, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, warmup: int,
                      precision: str) -> float:
    """Images/s of ``bench.train.train`` (crop-flip, the SGD recipe, no validation split):
    the warm-up steps run first as their own call, then ``steps`` steps are timed."""
    data = DataSplits("synthetic", x, y, x[:0], y[:0], x[:0], y[:0], NUM_CLASSES, "-", "-", augment="crop-flip")
    torch.manual_seed(0)
    model = build_network(net, SHAPE, NUM_CLASSES)
    per_epoch = len(y) // batch
    recipe = {"batch_size": batch, "lr": 0.01, "momentum": 0.9, "nesterov": True, "precision": precision}
    train(model, data, {**recipe, "epochs": warmup / per_epoch}, progress=False)
    sync(x.device)
    t0 = time.perf_counter()
    train(model, data, {**recipe, "epochs": steps / per_epoch}, progress=False)
    sync(x.device)
    return batch * steps / (time.perf_counter() - t0)


def compare_precisions(args, device: torch.device, precisions: list[str]) -> int:
    """Per network and precision: the bare step loop vs the project's training loop."""
    batch, steps, warmup = args.batch_size or 128, args.steps or 6, args.warmup if args.warmup is not None else 2
    n = batch * (steps + warmup)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SHAPE, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device)
    print(f"device: {device}; {torch.get_num_threads()} threads; torch {torch.__version__}; batch {batch}; "
          f"{steps} timed steps after {warmup}; native bf16 on this CPU: {prec.cpu_has_native_bf16()}")
    print(f"{'network':<9} {'precision':<10} {'bare img/s':>11} {'project img/s':>14} {'ratio':>7}")
    for net in [s.strip() for s in args.networks.split(",") if s.strip()]:
        for p in precisions:
            run_as = prec.resolve(p, device)
            torch.manual_seed(0)
            model = prepare_model(build_network(net, SHAPE, NUM_CLASSES), device, p)
            bare = time_resident(_Step(model, device, precision=p), x, y, batch, steps, warmup)
            loop = time_project_loop(net, x, y, batch, steps, warmup, p)
            print(f"{net:<9} {run_as:<10} {bare:>11,.0f} {loop:>14,.0f} {loop / bare:>7.2f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf train", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--networks", default="vgg16,alexnet,zfnet")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 50 on CUDA, 3 on CPU")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 10 on CUDA, 1 on CPU")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers; default 2 on CUDA, 0 on CPU")
    ap.add_argument("--skip-dataloader", action="store_true", help="time only the device-resident pipeline")
    ap.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                    help="also time the resident pipeline with torch.compile (auto: on CUDA when available)")
    ap.add_argument("--precisions", default=None,
                    help="e.g. fp32,bf16 (the default on a CPU): time the bare loop vs the project's loop per "
                         "precision instead of the pipelines; 'none' for the pipelines")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cpu":
        print(f"heap keeps freed memory (bench.cpu_memory, as sweeps run): {keep_freed_memory()}")
    if args.precisions is None and device.type == "cpu":
        args.precisions = "fp32,bf16"  # on a CPU the question is what bf16 buys
    if args.precisions and args.precisions != "none":
        return compare_precisions(args, device, [p.strip() for p in args.precisions.split(",") if p.strip()])
    cuda = device.type == "cuda"
    batch = args.batch_size or (256 if cuda else 32)
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    workers = args.workers if args.workers is not None else (2 if cuda else 0)
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    n = batch * min(steps + warmup, 64)  # enough distinct batches; small enough for any device
    g = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(n, *SHAPE, generator=g)
    y_cpu = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x, y = x_cpu.to(device), y_cpu.to(device)

    print(f"device: {name}; torch {torch.__version__}; batch {batch}; {steps} timed steps after {warmup} warm-up")
    print(f"data: synthetic random images of CIFAR shape {SHAPE}, {NUM_CLASSES} classes, {n} in memory")
    print("train: SGD step" + (", bf16 autocast, channels_last" if cuda else ", fp32"))
    compiled = compile_wanted(args.compile, device)
    header = (f"{'network':<9} {'params':>11} {'train resident':>15} {'train loader':>13} {'eval':>11}"
              + (f" {'compiled':>10}" if compiled else "") + "   (images/s)")
    print(header)
    for net in [s.strip() for s in args.networks.split(",") if s.strip()]:
        torch.manual_seed(0)
        model = prepare_model(build_network(net, SHAPE, NUM_CLASSES), device)
        params = sum(p.numel() for p in model.parameters())
        resident = time_resident(_Step(model, device), x, y, batch, steps, warmup)
        loader = float("nan")
        if not args.skip_dataloader:
            loader = time_dataloader(_Step(model, device), x_cpu, y_cpu, batch, steps, warmup, workers)
        ev = time_eval(model, x, batch if not cuda else max(batch, 1024), steps, warmup)
        line = f"{net:<9} {params:>11,} {resident:>15,.0f} {loader:>13,.0f} {ev:>11,.0f}"
        if compiled:
            try:  # the first compiled steps compile: the warm-up absorbs them
                comp = time_resident(_Step(model, device, compiled=True), x, y, batch, steps, max(warmup, 3))
                line += f" {comp:>10,.0f}"
            except Exception as e:  # noqa: BLE001 - a compiler that fails here is a result, not a crash
                line += f" compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
        print(line, flush=True)
    return 0


def compile_wanted(choice: str, device: torch.device) -> bool:
    """torch.compile is timed on CUDA when it exists (auto), or when asked (yes)."""
    if choice == "no" or not hasattr(torch, "compile"):
        return False
    return choice == "yes" or device.type == "cuda"
