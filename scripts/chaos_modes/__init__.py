"""The modes of ``scripts/chaos.py``, one module each: ``run(chaos)`` returns its rows of the kill
table by name (``checkpoints``: the rows of its own table), ``ROWS`` their titles."""
from __future__ import annotations

from . import checkpoints, concurrent, devices, devices_driver, empty_claim, local, queue_lock, ray
from ._harness import SLEEP_S, Chaos

MODES = {"local": local, "devices": devices, "concurrent": concurrent, "ray": ray, "checkpoints": checkpoints,
         "queue-lock": queue_lock, "devices-driver": devices_driver, "empty-claim": empty_claim}
TITLES = {row: title for mod in MODES.values() for row, title in mod.ROWS.items()}

__all__ = ["MODES", "SLEEP_S", "TITLES", "Chaos"]
