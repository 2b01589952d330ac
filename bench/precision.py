"""Numeric precision of training and evaluation: bf16 autocast (+ channels_last) or fp32.

A recipe's ``precision`` key says what to run:

* absent: the behaviour from before the key existed (bf16 autocast on CUDA, fp32 on the CPU), so
  records made without it keep their keys and their numbers;
* ``auto``: bf16 where the device computes it natively (CUDA; a CPU with AVX512-BF16 or AMX,
  where oneDNN runs bf16 convolutions and matmuls about 2x faster than fp32), else fp32;
* ``bf16`` / ``fp32``: that, on any device (bf16 on a CPU without native support is slow, not
  wrong).

Networks with convolutions also switch to channels_last under bf16 (on VGG-16 CPU training it
adds about 7 %, ``python -m bench.perf train``). Every record states the precision that ran.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """oneDNN's own test for bf16 kernels (AVX512-BF16 / AMX); False where torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(precision: str | None, device: torch.device) -> str:
    """``bf16`` or ``fp32``: what a recipe's ``precision`` runs as on ``device``."""
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(model: nn.Module, precision: str) -> bool:
    """Whether inputs and weights go channels_last: bf16 runs of networks with convolutions."""
    return precision == "bf16" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def input_layout(model: nn.Module, precision: str, device: torch.device) -> bool:
    """Whether batches go channels_last: bf16 conv networks, and every CUDA run (as before the
    ``precision`` key existed)."""
    return channels_last(model, precision) or device.type == "cuda"


def to_layout(x: torch.Tensor, use_channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if use_channels_last and x.dim() == 4 else x
