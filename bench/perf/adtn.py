"""ADTN generation speed: fused GEMM passes vs the plain gate-by-gate loop.

``python -m bench.perf adtn [--device cpu|cuda] [--quick] [--qs 16,20,24] [--depths 1,2,4]``

For each (Q, M, impl) it times one generation forward (under ``no_grad``, as eval mode
does) and forward+backward (training, per-brick-layer checkpointing on from Q = 20), and
reports the forward's achieved bandwidth: passes x (read + write of the 2^Q state) / time,
next to the device's copy bandwidth measured with a large ``clone``. Times are the minimum
over ``--repeats`` runs (the CPU may be shared).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from methods.adtn.generator import ADTNGenerator
from bench.perf import sync
from bench.train import resolve_device


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def copy_bandwidth(device: torch.device, numel: int, repeats: int) -> tuple[float, float]:
    """Bytes/s (one read + one write) of ``clone`` and of ``copy_`` into a preallocated tensor,
    ``numel`` float32. On the CPU a fresh large allocation page-faults, so clone is the
    slower of the two there; on CUDA the caching allocator makes them equal."""
    x = torch.ones(numel, device=device)
    y = torch.empty_like(x)
    moved = 2 * x.numel() * x.element_size()
    return moved / best_time(lambda: x.clone(), device, repeats), moved / best_time(lambda: y.copy_(x), device, repeats)


def run(device: torch.device, qs: list[int], depths: list[int], impls: list[str], fuse: int, repeats: int,
        skip: Callable[[int, int, str], bool]) -> list[dict]:
    rows = []
    for q in qs:
        for m in depths:
            for impl in impls:
                if skip(q, m, impl):
                    continue
                torch.manual_seed(0)
                gen = ADTNGenerator(2 ** q, m, impl=impl, fuse=fuse, device=device)
                state_bytes = 2 ** q * 4

                def fwd() -> None:
                    with torch.no_grad():
                        gen()

                def fwd_bwd() -> None:
                    gen.zero_grad(set_to_none=True)
                    gen().sum().backward()

                t_f = best_time(fwd, device, repeats)
                t_fb = best_time(fwd_bwd, device, repeats)
                passes = gen.passes()
                rows.append({"Q": q, "M": m, "impl": impl, "passes": passes, "fwd_ms": 1e3 * t_f,
                             "fwd_bwd_ms": 1e3 * t_fb, "fwd_bytes_per_s": passes * 2 * state_bytes / t_f})
                print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r: dict, copy_bw: tuple[float, float] | None = None) -> str:
    line = (f"{r['Q']:>3} {r['M']:>2} {r['impl']:>6} {r['passes']:>6} {r['fwd_ms']:>10.2f} {r['fwd_bwd_ms']:>11.2f} "
            f"{r['fwd_bytes_per_s'] / 1e9:>9.2f}")
    if copy_bw:
        line += "".join(f" {100 * r['fwd_bytes_per_s'] / bw:>7.1f}%" for bw in copy_bw)
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf adtn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    ap.add_argument("--quick", action="store_true",
                    help="skip Q >= 24 at M > 1 (Q=24 runs at M=1 only)")
    ap.add_argument("--qs", default="16,20,24")
    ap.add_argument("--depths", default="1,2,4")
    ap.add_argument("--fuse", type=int, default=2, help="gates per fused GEMM")
    ap.add_argument("--impls", default="loop,fused")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    qs = [int(x) for x in args.qs.split(",")]
    depths = [int(x) for x in args.depths.split(",")]
    impls = args.impls.split(",")

    def skip(q: int, m: int, impl: str) -> bool:
        return args.quick and q >= 24 and m > 1

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    copy_bw = copy_bandwidth(device, 2 ** 26 if device.type == "cuda" else 2 ** 25, args.repeats)
    print(f"device: {name}; copy bandwidth (read+write): clone {copy_bw[0] / 1e9:.2f} GB/s, "
          f"copy_ into a preallocated tensor {copy_bw[1] / 1e9:.2f} GB/s; fuse={args.fuse}")
    print("  Q  M   impl passes     fwd_ms  fwd_bwd_ms  fwd_GB/s")
    rows = run(device, qs, depths, impls, args.fuse, args.repeats, skip)
    print("\nsummary: fwd GB/s as % of the clone and copy_ bandwidths; speed-up of fused over loop")
    print("  Q  M   impl passes     fwd_ms  fwd_bwd_ms  fwd_GB/s   %clone   %copy_")
    by = {(r["Q"], r["M"], r["impl"]): r for r in rows}
    for r in rows:
        line = _fmt(r, copy_bw)
        base = by.get((r["Q"], r["M"], "loop"))
        if r["impl"] != "loop" and base:
            line += f"  x{base['fwd_ms'] / r['fwd_ms']:.2f} fwd, x{base['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f} fwd+bwd"
        print(line)
    return 0
