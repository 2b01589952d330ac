"""Calibrate the cost model (bench/cost.py) on this device: ``python -m bench.perf calibrate``.

Why: ``--time-budget``, ``factorize_time_cap_s`` and ``--dry-run``'s estimates need to know
how fast this device trains each network and factorises each layer size, before any job runs.

Measures, briefly (a few batches per CIFAR network):

* train and eval images/s of every network, dense, on synthetic data of its input shape, in
  each precision of ``--precisions`` (default: those the device computes natively, fp32 and
  bf16 on CUDA or a CPU with AVX512-BF16/AMX, else fp32), run as ``bench.train`` runs it
  (bf16: autocast and channels_last); the device's default precision (what a recipe without
  ``precision`` runs) is always measured and also fills the top-level figures;
* what ``precision: auto`` resolves to here, and the seconds of a near-empty training step
  (a 3-layer head: what a frozen-prefix suffix costs at least per step);
* per-job overhead per network (copying the model, counting its FLOPs);
* per method, allocation + compression time of square Linear layers of a few sizes at a 32x
  budget (after one untimed warm-up), fitted as ``t = a * N**b`` in the number N of weights
  over the three largest sizes (ADTN: seconds per pre-fit
  step from the difference of 0 and a few steps, and its start, the rank-1 fit, apart).

Writes a small JSON (default ``results/calibration/<cpu|cuda>.json``) and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from bench import precision as prec
from bench.cost import VERSION, default_path, device_kind, fit_power_law
from bench.perf import sync
from bench.perf.train import _Step, time_resident
from bench.train import prepare_model, resolve_device

#: network -> dataset whose input shape it is calibrated on
NETWORKS = {"digitnet": "digits", "fc2": "mnist", "lenet5": "mnist", "vgg16": "cifar10", "alexnet": "cifar10",
            "zfnet": "cifar10"}
CIFAR_NETS = ("vgg16", "alexnet", "zfnet")
ADTN_STEPS = 3


def supported_precisions(device: torch.device) -> list[str]:
    """The precisions this device computes natively (bf16 only where ``auto`` would pick it)."""
    return ["fp32", "bf16"] if prec.resolve("auto", device) == "bf16" else ["fp32"]


class _RecipeStep(_Step):
    """The SGD step in one precision, its batches laid out as ``bench.train`` lays them out
    (channels_last for bf16 conv networks and on every CUDA run)."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        super().__init__(model, device, precision=precision)
        self.layout = prec.input_layout(model, precision, device)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return super().__call__(prec.to_layout(xb, self.layout), yb)


@torch.no_grad()
def time_eval(model: nn.Module, x: torch.Tensor, batch: int, steps: int, warmup: int, precision: str) -> float:
    """Images/s of ``bench.train.evaluate``'s forward (eval mode) in ``precision``."""
    model.eval()
    device = x.device
    layout = prec.input_layout(model, precision, device)
    batch = min(batch, len(x))
    n_batches = len(x) // batch
    with prec.autocast(device, precision):
        for s in range(warmup + steps):
            if s == warmup:
                sync(device)
                t0 = time.perf_counter()
            model(prec.to_layout(x[(s % n_batches) * batch:][:batch], layout))
    sync(device)
    model.train()
    return batch * steps / (time.perf_counter() - t0)


def measure_network(net: str, device: torch.device, batch: int, steps: int, warmup: int,
                    precisions: list[str] | None = None) -> dict:
    """Train and eval images/s of ``net`` per precision (``precisions``, each bf16 or fp32),
    the default precision's also at the top level, and the per-job overhead."""
    from bench.metrics import forward_flops
    from bench.models import build_network
    from bench.registry import dataset_spec

    spec = dataset_spec(NETWORKS[net])
    default = prec.resolve(None, device)
    n = batch * (steps + warmup)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *spec.shape, generator=g).to(device)
    y = torch.randint(0, spec.classes, (n,), generator=g).to(device)
    augment = "crop-flip" if net in CIFAR_NETS else None
    speeds = {}
    for p in dict.fromkeys([default, *(precisions or [])]):
        torch.manual_seed(0)
        model = prepare_model(build_network(net, spec.shape, spec.classes), device, p)
        speeds[p] = {"train_img_s": time_resident(_RecipeStep(model, device, p), x, y, batch, steps, warmup,
                                                  augment=augment),
                     "eval_img_s": time_eval(model, x, batch, max(steps, 2), warmup, p)}
    t0 = time.perf_counter()
    copy.deepcopy(model)
    forward_flops(model, spec.shape, device)
    sync(device)
    overhead = 2 * (time.perf_counter() - t0)  # run_job copies and counts twice (compressed, dense)
    return {"input": list(spec.shape), "batch": batch, **speeds[default], "precisions": speeds,
            "job_overhead_s": overhead}


def measure_step_floor(device: torch.device, precision: str, batch: int = 512, steps: int = 50,
                       warmup: int = 5) -> float:
    """Seconds of one training step of a small 3-Linear head (width 64): what a step costs
    whatever its FLOPs (kernel launches, optimizer, Python), the floor of a frozen-prefix
    suffix's steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * batch, 64, generator=g).to(device)
    y = torch.randint(0, 10, (4 * batch,), generator=g).to(device)
    return batch / time_resident(_RecipeStep(model, device, precision), x, y, batch, steps, warmup, augment=None)


def _layer(n: int, device: torch.device) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(n, n).to(device)
    with torch.no_grad():
        layer.weight.normal_(0, n ** -0.5)
    return layer


#: ADTN is timed at this depth; the cost model scales a step by the passes at the job's depth
ADTN_DEPTH = 1


def _time_factorize(name: str, n: int, device: torch.device, options: dict, knob=None) -> float:
    from bench.registry import get_method

    method = get_method(name, **options)
    layer = _layer(n, device)
    sync(device)
    t0 = time.perf_counter()
    knobs = {"l": knob} if knob is not None else method.allocate({"l": layer}, 32.0)
    method.factorize(layer, knobs["l"])
    sync(device)
    return time.perf_counter() - t0


def measure_method(name: str, sizes: list[int], device: torch.device, max_seconds: float) -> dict | None:
    """Allocation + compression time of an n x n Linear per n; stops growing n once one
    measurement takes longer than ``max_seconds``. ADTN: its start (rank-1 fit, no steps) and
    the time per pre-fit step (the difference to ``ADTN_STEPS`` steps), separately."""
    per_step = name == "adtn"
    points, starts = [], []
    for n in [min(sizes) // 2] + sizes:  # the first, untimed, pays imports and first-call costs
        if per_step:
            t0 = _time_factorize(name, n, device, {"prefit_steps": 0, "prefit_polish": 0}, ADTN_DEPTH)
            t = _time_factorize(name, n, device, {"prefit_steps": ADTN_STEPS, "prefit_polish": 0}, ADTN_DEPTH)
            value = max(t - t0, 1e-7) / ADTN_STEPS
        else:
            t = value = _time_factorize(name, n, device, {})
        if n < min(sizes):
            continue
        points.append((n * n, value))
        if per_step:
            starts.append((n * n, t0))
        print(f"  {name:12s} {n:>5}x{n:<5} {t:9.3f} s" + (f"  (start {t0:.3f} s, {value:.4f} s/step)"
                                                          if per_step else ""), flush=True)
        if t > max_seconds:
            break
    a, b = fit_power_law(points[-3:])  # the largest sizes: closest to the layers it extrapolates to
    law = {"a": a, "b": b, "points": [[int(p), round(s, 6)] for p, s in points], "budget": "x32"}
    if per_step:
        ia, ib = fit_power_law(starts[-3:])
        law.update(per_step=True, steps_measured=ADTN_STEPS, depth=ADTN_DEPTH,
                   start={"a": ia, "b": ib, "points": [[int(p), round(s, 6)] for p, s in starts]})
    return law


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--out", default=None, help="JSON file (default results/calibration/<cpu|cuda>.json)")
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--precisions", default=None,
                    help="comma-separated bf16,fp32 to time each network in; default: the ones the device "
                         "computes natively (the default precision is always timed)")
    ap.add_argument("--methods", default=None, help="default: every registered method but dense")
    ap.add_argument("--sizes", default=None, help="n of the n x n layers; default 128,256,512,1024 on the CPU, "
                                                  "256,512,1024,2048 on CUDA")
    ap.add_argument("--max-seconds", type=float, default=20.0,
                    help="stop a method's larger sizes after one measurement this long")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    from bench.registry import is_reference, method_names

    kind = device_kind(str(device))
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})"
    print(f"calibrating {kind}: {name}; torch {torch.__version__}; {torch.get_num_threads()} threads", flush=True)
    precisions = _csv(args.precisions) or supported_precisions(device)
    bad = sorted(set(precisions) - {"bf16", "fp32"})
    if bad:
        ap.error(f"--precisions {','.join(bad)}: expected bf16 and/or fp32")
    default = prec.resolve(None, device)
    cal = {"version": VERSION, "device": kind, "device_name": name, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "default_precision": default, "auto_precision": prec.resolve("auto", device),
           "step_floor_s": measure_step_floor(device, default),
           "networks": {}, "factorize": {}, "job_overhead_s": {}}
    print(f"precisions {','.join(dict.fromkeys([default, *precisions]))} (default {default}, auto "
          f"{cal['auto_precision']}); step floor {cal['step_floor_s'] * 1e3:.2f} ms")
    print(f"{'network':9s} {'batch':>5s} {'precision':>9s} {'train img/s':>12s} {'eval img/s':>11s} {'overhead s':>10s}")
    for net in _csv(args.networks) or []:
        big = net in CIFAR_NETS
        batch = (512 if big else 256) if cuda else (32 if big else 128)
        steps, warmup = (20, 5) if cuda else ((2, 1) if big else (10, 2))
        r = measure_network(net, device, batch, steps, warmup, precisions)
        cal["job_overhead_s"][net] = r.pop("job_overhead_s")
        cal["networks"][net] = r
        for p, v in r["precisions"].items():
            print(f"{net:9s} {batch:>5d} {p:>9s} {v['train_img_s']:>12,.0f} {v['eval_img_s']:>11,.0f} "
                  f"{cal['job_overhead_s'][net]:>10.3f}", flush=True)
    sizes = [int(s) for s in (args.sizes or ("256,512,1024,2048" if cuda else "128,256,512,1024")).split(",")]
    methods = args.methods.split(",") if args.methods else [m for m in method_names() if not is_reference(m)]
    print("factorisation (allocation + compress of an n x n Linear at x32; adtn: per pre-fit step)")
    for m in methods:
        cal["factorize"][m] = measure_method(m, sizes, device, args.max_seconds)
    print(f"{'method':12s} {'a':>10s} {'b':>6s} {'t(2^21) s':>10s} {'t(2^24) s':>10s}")
    for m, law in cal["factorize"].items():
        f = (lambda n: law["a"] * n ** law["b"])
        print(f"{m:12s} {law['a']:>10.3g} {law['b']:>6.2f} {f(2 ** 21):>10.3g} {f(2 ** 24):>10.3g}"
              + ("  per step" if law.get("per_step") else ""))
    out = Path(args.out) if args.out else default_path(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cal, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
