"""Shared fixtures: a tiny suite on the embedded digits, and where real data lives."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TNBENCH_DATA", REPO.parent / "shared" / "data"))

TINY = {
    "description": "tiny test suite",
    "datasets": ["digits"],
    "networks": {"digitnet": ["conv2", "fc1"]},
    "methods": ["dense", "svd"],
    "ratios": [2, 8],
    "protocol": {"seeds": [0]},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "finetune": {"epochs": 0.5, "batch_size": 64, "lr": 0.01},
}


@pytest.fixture
def tiny_suite(tmp_path: Path):
    """Write a tiny suite file; ``tiny_suite(**changes)`` returns its path (protocol keys such as
    ``seeds=[0, 1]`` go into its ``protocol:`` block)."""
    from bench.suite_schema import PROTOCOL_KEYS

    def make(**changes) -> Path:
        path = tmp_path / f"tiny{len(list(tmp_path.glob('tiny*.yaml')))}.yaml"
        protocol = {**TINY["protocol"], **{k: changes.pop(k) for k in list(changes) if k in PROTOCOL_KEYS}}
        path.write_text(yaml.safe_dump({**TINY, "protocol": protocol, **changes}))
        return path

    return make


SVD_PLUGIN = """{imports}
from bench.registry import register_method
from methods.svd import TruncatedSVD


@register_method({name!r})
class Plugin(TruncatedSVD):
    \"\"\"svd with one step changed by a test.\"\"\"
{body}
"""


def slow_factorize(seconds: float) -> str:
    """A plugin body whose factorize sleeps first (jobs long enough to kill or share)."""
    return f"def factorize(self, layer, rank):\n    time.sleep({seconds})\n    return super().factorize(layer, rank)\n"


@pytest.fixture
def svd_plugin(tmp_path: Path):
    """Write a plugin file: ``svd_plugin(name, body, imports="", path=None)`` registers ``name``,
    a TruncatedSVD whose class body is ``body`` (overrides of its steps); returns the file's path.
    The one plugin text the reliability, runner and bad-input tests share."""

    def make(name: str, body: str = "pass", imports: str = "", path: Path | None = None) -> Path:
        path = Path(path or tmp_path / f"{name.replace('-', '_')}.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        body = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
        path.write_text(SVD_PLUGIN.format(imports=imports, name=name, body=body))
        return path

    return make


def mnist_available() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()


def records_by_budget(out: Path, suite: Path) -> dict[str, dict]:
    """The records a run of ``suite`` left under ``out``, by budget ("x2", ...)."""
    from bench.records import read_records

    return {r["budget"]: r for r in read_records(Path(out) / suite.stem / "runs.jsonl")}


def dead_pid() -> int:
    """The pid of a process that has exited (a claim holder that died)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
