"""A real full disk: a sweep whose --out is a small tmpfs (where this machine lets the tests
mount one: root with CAP_SYS_ADMIN; skipped elsewhere). The other disk-full tests fake the
failing write; this one lets the kernel refuse it, wherever in the sweep the space runs out.

Nothing may be lost: every record written before the disk filled is still there, whole;
the sweep stops with one ``error:`` line and exit 2; once there is space again, the same command
resumes and finishes."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import read_records

MOUNT_BYTES = 4 << 20


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_BYTES}", f"tnbench-{uuid.uuid4().hex[:8]}",
                           str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> Path:
    """A filler file taking all but ``leave`` bytes of the disk."""
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def _ok(out: Path, suite: Path) -> list[dict]:
    path = out / suite.stem / "runs.jsonl"
    return [r for r in read_records(path) if r["status"] == "ok"] if path.exists() else []


@pytest.mark.parametrize("leave", [0, 2_000, 60_000])
def test_a_sweep_on_a_full_disk_loses_no_record_and_resumes(leave, small_disk, tiny_suite, capsys):
    """``leave`` bytes free: none or a few KB (the first claim fails: tmpfs gives out whole
    4 KiB pages), 60 KB (the checkpoint fails part-way)."""
    out = small_disk / "out"
    first = tiny_suite(methods=["dense", "svd"], seeds=[0])
    assert main(["--suite", str(first), "--out", str(out), "--no-progress"]) == 0
    before = _ok(out, first)
    assert len(before) >= 2  # dense and svd at its budgets
    capsys.readouterr()

    more = tiny_suite(methods=["dense", "svd"], seeds=[0, 1])
    (out / more.stem).mkdir(parents=True)
    shutil.copy(out / first.stem / "runs.jsonl", out / more.stem / "runs.jsonl")
    filler = _fill(small_disk, leave)
    code = main(["--suite", str(more), "--out", str(out), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    kept = _ok(out, more)
    assert code == 2, err  # seed 1 needs a claim and a checkpoint: neither fits
    # ENOSPC, or torch.save's opaque short write (where the disk fills depends on the claim files)
    assert len(err) == 1 and ("No space left on device" in err[0] or "probably a full disk" in err[0]), err
    assert {r["key"] for r in before} <= {r["key"] for r in kept}  # nothing lost
    assert not list(out.rglob("*.tmp"))

    filler.unlink()
    assert main(["--suite", str(more), "--out", str(out), "--no-progress"]) == 0
    assert len(_ok(out, more)) == 2 * len(before)
