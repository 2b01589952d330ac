"""Benchmarks: ``python -m bench.perf NAME`` runs ``bench/perf/NAME.py``'s ``main``."""
import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
