"""Job records: one JSON object per line in ``runs.jsonl``, keyed by a hash of the job config.

Appends are a single ``write`` of one whole line under an exclusive lock; a torn last line
from a killed process is cut off before the next append, so the file only holds whole lines.
Reading never fails on a bad line (invalid UTF-8, broken JSON, JSON that is not a record): a
results file damaged by a disk, an editor or a foreign tool must not stop a resume or a report.
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=_jsonable) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _mend_tail(fd)
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _mend_tail(fd: int) -> None:
    """Make the file end in a newline (caller holds the lock). Bytes, never text: a file with
    invalid UTF-8 must still be mended. A torn tail left by a killed writer is cut off; a tail
    that is a whole record (only its newline missing) is kept, since ``read_records`` counts it."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return
    data = os.pread(fd, size, 0)
    start = data.rfind(b"\n") + 1
    if isinstance(_parse_line(data[start:]), dict):
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, b"\n")
    else:
        os.ftruncate(fd, start)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _parse_line(raw: bytes) -> dict[str, Any] | str | None:
    """The record on one line; a str saying why it is not one; None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"invalid UTF-8 at byte {e.start}"
    if not text.strip():
        return None
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
        return f"broken JSON ({type(e).__name__})"
    if not _is_record(rec):
        return f"not a record (a {type(rec).__name__} without a string 'key')"
    return rec


def _is_record(rec: Any) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("key"), str)


def _read_locked(path: Path) -> bytes:
    """The file's bytes under a shared lock: a sweep reading while another appends never sees a
    half-written line (appends hold the exclusive lock for their whole write)."""
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        try:
            return f.read()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All whole records of a file, in order. Any bad line (a torn tail, invalid UTF-8, broken
    JSON, JSON that is not an object with a string ``key``) is skipped with one warning naming
    the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, raw in enumerate(_read_locked(path).split(b"\n"), 1):
        rec = _parse_line(raw)
        if isinstance(rec, str):
            warnings.warn(f"{path}:{i}: ignoring a bad record line: {rec}", stacklevel=2)
        elif rec is not None:
            out.append(rec)
    return out


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each job key (a re-run after a failure supersedes it). Entries that
    are not records are skipped with a warning, never raised on."""
    latest: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(records):
        if _is_record(r):
            latest[r["key"]] = r
        else:
            warnings.warn(f"record #{i}: ignoring a {type(r).__name__} without a string 'key'", stacklevel=2)
    return latest


def done_keys(path: Path) -> set[str]:
    """Keys of jobs that need no re-run: finished ok, or skipped as not applicable."""
    return {k for k, r in latest_by_key(read_records(path)).items() if r.get("status") in ("ok", "skipped")}
