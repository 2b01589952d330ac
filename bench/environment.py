"""Where and with what a record was made: the code version (git), the processor (model name,
family/model/stepping, vector ISA) and the library versions. The runner stamps every record
with them once per sweep; the cost model fits its corrections per processor kind from them."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def code_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo; else what ``platform`` says): records made on
    different processors time differently (bf16 kernels: AMX or not), and the cost model's
    corrections are fitted per machine kind from them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id() -> str:
    """The processor beyond its marketing name: family, model and stepping (/proc/cpuinfo, x86)
    and the vector ISA torch dispatches to. Why: two hosts both named "AMD EPYC" trained the
    same seed-0 MNIST baseline to different weights (results/lenet5-v3/PARTIAL.md); a
    baseline is deterministic per processor kind only, and this says which kind made a record."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("cpu family", "model", "stepping") and name not in fields:
                    fields[name] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        pass
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
    ident = " ".join(f"{k.split()[-1]} {v}" for k, v in fields.items())
    return f"{ident}, {capability}".strip(", ")


def environment() -> dict[str, Any]:
    """Versions on the driver; each record adds where it ran (``device``, ``threads``)."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "host_cpu": platform.machine(),
           "cpu_model": cpu_model(), "cpu_id": cpu_id()}
    try:
        import tensorly
        env["tensorly"] = tensorly.__version__
    except ImportError:
        pass
    return env
