"""Keep freed memory in the process heap on Linux CPUs, so large tensors stop page-faulting.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it to the kernel on ``free``. PyTorch's CPU allocator has no cache of its own, so a
training step that makes a 64 MiB tensor (ADTN's 2^24-entry generator state, one per GEMM pass;
VGG-16's early activations) pays the page faults of touching new memory every time. Measured
on this project's 2-core AMD EPYC, one thread, while a 2-thread sweep ran beside it (so only
the ratios mean much): one ADTN generation forward + backward at Q = 24, depth 1 took 1.03 s
with glibc's defaults and 0.50 s with ``keep_freed_memory()``; a 64 MiB GEMM pass 40 ms into a
fresh tensor, 16 ms into a reused one. ``python -m bench.perf adtn_step`` times a whole step.

``keep_freed_memory()`` turns mmap off for the allocator (``M_MMAP_MAX = 0``) and raises the
trim threshold, so freed blocks stay in the heap and are reused. Numbers do not change: the
same kernels run on the same values, only where the memory comes from differs. The cost is a
resident size that does not shrink after a peak (fine for a benchmark worker).
``TNBENCH_KEEP_FREED_MEMORY=0`` leaves glibc's defaults alone. A no-op off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: freed heap memory kept up to this much before glibc trims it back to the kernel
TRIM_THRESHOLD = 1 << 30

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Switch the process's glibc heap to keep freed memory; True when it now does.
    Idempotent; False where disabled by the environment or not on glibc."""
    if "kept" not in _state:
        _state["kept"] = _switch()
    return _state["kept"]


def _switch() -> bool:
    if os.environ.get("TNBENCH_KEEP_FREED_MEMORY", "1").strip() in ("0", "false", "no", "off"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
