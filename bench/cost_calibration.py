"""Calibration files: reading a device's calibration and the power laws it stores.

Why a module of its own (issue #22): the file format and its laws are shared by the cost
model (``bench.cost_model``) and the tool that writes the files (``bench/perf/calibrate.py``);
neither needs the model's job accounting to read or fit them.

A calibration (``python -m bench.perf calibrate``, ``bench/perf/calibrate.py``) is a small
JSON file: train and eval images/s of each network (dense, at one batch size), per precision
(``networks.<net>.precisions.<bf16|fp32>``; the top-level figures are the device's default
precision, all that calibrations made before precisions carry), what ``precision: auto``
resolved to there (``auto_precision``), the seconds of a near-empty training step
(``step_floor_s``) and, per method, a power law ``t = a * N**b`` of the factorisation time
(allocation + compress) in the number N of a layer's weights (ADTN: seconds per pre-fit step,
in the generator's size 2**Q, and its start apart).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.errors import InputError

#: still 1: everything added since (precisions, auto_precision, step_floor_s) is optional
VERSION = 1

#: seconds of a training step whatever its FLOPs, for calibrations made before step_floor_s
DEFAULT_STEP_FLOOR_S = 1e-3


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` (a calibration is per kind; the file records the device's name)."""
    return "cuda" if str(device).startswith("cuda") or (str(device) == "auto" and _cuda()) else "cpu"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class CalibrationError(InputError, ValueError):
    """A calibration file that is not valid JSON or not of this version."""


def load_calibration(path: Path | str) -> dict[str, Any] | None:
    """The calibration in ``path``, or None when there is none (a bad file is an error)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        cal = json.loads(path.read_text())
    except ValueError as e:
        raise CalibrationError(f"calibration {path}: not valid JSON ({e})") from None
    if not isinstance(cal, dict) or cal.get("version") != VERSION or "networks" not in cal:
        raise CalibrationError(f"calibration {path}: not a version-{VERSION} calibration "
                         f"(rerun python -m bench.perf calibrate)")
    cal["path"] = str(path)
    return cal


def law(fit: dict[str, Any], n: float) -> float:
    """A calibrated power law at ``n``."""
    return fit["a"] * n ** fit["b"]


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of t = a * N**b by least squares in log-log; b clipped to [0, 3] (a time that
    falls with size is noise). One point: b = 1."""
    pts = [(math.log(n), math.log(max(t, 1e-7))) for n, t in points if n > 0]
    if not pts:
        raise ValueError("no points to fit")
    if len(pts) == 1:
        b = 1.0
    else:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        var = sum((x - mx) ** 2 for x, _ in pts)
        b = sum((x - mx) * (y - my) for x, y in pts) / var if var else 1.0
    b = min(max(b, 0.0), 3.0)
    a = math.exp(sum(y - b * x for x, y in pts) / len(pts))
    return a, b
