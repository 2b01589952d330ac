"""Job records: one JSON object per line in ``runs.jsonl``, keyed by a hash of the job config.

Appends are a single ``write`` of one whole line under an exclusive lock; a torn last line
from a killed process is cut off before the next append, so the file only holds whole lines.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable


def config_key(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=_jsonable) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.lseek(fd, 0, os.SEEK_END)
        if size:  # drop a torn tail left by a killed writer
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                data = Path(path).read_bytes()
                os.ftruncate(fd, data.rfind(b"\n") + 1)
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All whole records of a file, in order (a torn last line is ignored with a warning)."""
    if not Path(path).exists():
        return []
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: ignoring a broken record line")
    return out


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each job key (a re-run after a failure supersedes it)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        latest[r["key"]] = r
    return latest


def done_keys(path: Path) -> set[str]:
    """Keys of jobs that need no re-run: finished ok, or skipped as not applicable."""
    return {k for k, r in latest_by_key(read_records(path)).items() if r.get("status") in ("ok", "skipped")}
