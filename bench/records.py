"""Job records: one JSON object per line in ``runs.jsonl``, keyed by a hash of the job config.

Appends write one whole line under an exclusive lock, check that every byte went out and
fsync; a failed append (disk full, EIO, a file that is not a regular file) truncates the file
back to what it was and raises ``RecordWriteError`` naming the file and the cause, so the sweep
stops instead of reporting a record it did not keep. A torn last line from a killed process is
cut off before the next append, and only that: a line ends at LF, CRLF or a lone CR (an editor's
or another OS's convention), so no line-ending convention is read as one torn line and cut away.
Reading never fails on a bad line (invalid UTF-8, broken JSON, JSON that is not a record): a
results file damaged by a disk, an editor or a foreign tool must not stop a resume or a report.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Iterable


def config_key(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: the record fields that are its job's config (``bench.suite.Job.config``, the dict the key
#: hashes); the optional ones are in a config only when the job sets them
CONFIG_FIELDS = ("network", "dataset", "layers", "method", "options", "target_ratio", "knob", "seed", "train",
                 "finetune", "data", "fit_only")
OPTIONAL_CONFIG_FIELDS = ("lr_grid", "optimizer_grid", "lr_extend", "pick_fallbacks", "tune_epochs",
                          "bias_calibration_rule", "minmax_rule", "fallback_when")


def record_config(rec: dict[str, Any]) -> dict[str, Any]:
    """The config a record says its job had (a fit-only job's key leaves fine-tuning out)."""
    cfg = {f: rec.get(f) for f in CONFIG_FIELDS}
    if rec.get("fit_only"):
        cfg["finetune"] = None
    cfg.update({f: rec[f] for f in OPTIONAL_CONFIG_FIELDS if f in rec})
    return cfg


def key_matches(rec: dict[str, Any]) -> bool:
    """Whether the record's key is the hash of the config its own fields state: a record edited
    by hand, or copied under another job's key, is not."""
    return rec.get("key") == config_key(record_config(rec))


class OutputWriteError(OSError):
    """A file of the sweep (record, checkpoint, table, plot) that could not be written: one line
    naming the file and the cause; the CLI stops with exit 2 (a full disk is no job's fault)."""


class RecordWriteError(OutputWriteError):
    """An append that did not land whole; the message is one line naming the file and cause."""


def write_cause(e: BaseException) -> str:
    """The cause of a failed write in words: torch.save reports a full disk as an opaque
    RuntimeError ('enforce fail at inline_container.cc'), whose errno is lost."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "inline_container" in text or "PytorchStreamWriter" in text:
        return f"the write failed, probably a full disk ({text[:80]})"
    return text


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line; on any failure the file is left as it was and
    ``RecordWriteError`` is raised."""
    _write_at_end(Path(path), (json.dumps(record, sort_keys=True, default=_jsonable) + "\n").encode())


def mend_records(path: Path) -> None:
    """Cut a torn last line (a writer killed mid-line) before a sweep starts, so a resume with
    nothing left to run still leaves whole lines only; no file, nothing to do."""
    if Path(path).is_file():
        _write_at_end(Path(path), b"")


def _write_at_end(path: Path, line: bytes) -> None:
    """Under the file's lock: mend its tail, then write ``line`` (may be empty) and fsync."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RecordWriteError(f"cannot write records to {path}: {_cause(e)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RecordWriteError(f"cannot write records to {path}: not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            prefix = _mend_tail(fd)  # may cut a torn tail: that is garbage, not a record
            size = os.fstat(fd).st_size
            if prefix + line:
                write_all(fd, prefix + line)
            os.fsync(fd)
        except OSError as e:
            _restore_size(fd, size)
            raise RecordWriteError(f"cannot write records to {path}: {_cause(e)} "
                                   f"(the file is left as it was)") from None
    finally:
        os.close(fd)  # closing releases the lock


def _cause(e: OSError) -> str:
    return write_cause(e)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte at the end of the file: a short write (a nearly full disk) goes on from
    where it stopped; no progress at all is an error (ENOSPC)."""
    os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _restore_size(fd: int, size: int) -> None:
    """Cut a failed append's partial bytes off again (best effort: the disk may be gone)."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass


def _mend_tail(fd: int) -> bytes:
    """Bytes to write before the next line so the file ends at a line boundary (caller holds the
    lock). Bytes, never text: a file with invalid UTF-8 must still be mended. A line ends at LF
    or CR. A torn tail left by a killed writer (bytes after the last line end that are not a
    whole record) is cut off; a tail that is a whole record (only its line end missing) is kept,
    since ``read_records`` counts it, and gets a newline."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) in (b"\n", b"\r"):
        return b""
    data = os.pread(fd, size, 0)
    start = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    if isinstance(_parse_line(data[start:]), dict):
        return b"\n"
    os.ftruncate(fd, start)
    return b""


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
    """All whole records of a file, in order. Bad lines (a torn tail, invalid UTF-8, broken
    JSON, JSON that is not an object with a string ``key``) are skipped with one warning for the
    file that counts them and names the first few (a file of 20,000 bad lines once printed
    40,000 warning lines)."""
    path = Path(path)
    if not path.exists():
        return []
    out, bad = [], []
    for i, raw in enumerate(_read_locked(path).splitlines(), 1):  # LF, CRLF and lone CR
        rec = _parse_line(raw)
        if isinstance(rec, str):
            bad.append(f"line {i}: {rec}")
        elif rec is not None:
            out.append(rec)
    _warn_bad_lines(path, bad)
    return out


def _warn_bad_lines(path: Path, bad: list[str]) -> None:
    """One warning for a file's bad lines: the count and the first few (the same text from
    ``read_records`` and ``RecordIndex``, so a CLI that prints each warning once prints it once)."""
    if bad:
        more = f"; and {len(bad) - SHOWN_BAD_LINES} more" if len(bad) > SHOWN_BAD_LINES else ""
        warnings.warn(f"{path}: ignoring {len(bad)} bad record line(s): " + "; ".join(bad[:SHOWN_BAD_LINES]) + more,
                      stacklevel=3)


#: bad lines named in read_records' warning
SHOWN_BAD_LINES = 3


def latest_by_key(records: Iterable[dict[str, Any]], where: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """The last record of each job key (a re-run after a failure supersedes it). Entries that
    are not records are skipped with a warning, never raised on; so is a record marked done
    that this code did not write (not ``trusted``) coming after one it did: it never
    supersedes it, in a resume or in a table."""
    return _latest(records, where)[0]


def _latest(records: Iterable[dict[str, Any]], where) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """``latest_by_key``, and the keys whose latest record is marked done but not trusted."""
    latest: dict[str, dict[str, Any]] = {}
    untrusted: set[str] = set()
    bad, shadowed = [], 0
    for i, r in enumerate(records):
        if not _is_record(r):
            bad.append(f"#{i} ({type(r).__name__})")
        elif not _fold(latest, untrusted, r):
            shadowed += 1
    if bad:
        warnings.warn(f"ignoring {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} without a string 'key': "
                      + ", ".join(bad[:SHOWN_BAD_LINES]) + (" ..." if len(bad) > SHOWN_BAD_LINES else ""), stacklevel=3)
    _warn_shadowed(where, shadowed)
    return latest, untrusted


def _fold(latest: dict[str, dict[str, Any]], untrusted: set[str], rec: dict[str, Any]) -> bool:
    """Take ``rec`` as its key's latest record (``untrusted`` kept in step: the keys whose
    latest record is not ``trusted``); False, taking nothing, for an untrusted record after a
    trusted one of the same job (a copy with a NaN accuracy, fields edited by hand), so that
    the trusted one stands. Each record's trust (a hash of its config) is computed once."""
    key = rec["key"]
    good = trusted(rec)
    if not good and key in latest and key not in untrusted:
        return False
    latest[key] = rec
    (untrusted.discard if good else untrusted.add)(key)
    return True


def trusted(rec: dict[str, Any]) -> bool:
    """Whether a record is one this code writes: one marked done (ok, skipped) must be
    ``is_complete``; a failed one always is (at worst its job runs again)."""
    return rec.get("status") not in ("ok", "skipped") or is_complete(rec)


def _warn_shadowed(where: Path | str | None, n: int) -> None:
    if n:
        warnings.warn(f"{where or 'records'}: {n} record(s) marked done after a trusted record of the same job lack "
                      "the fields a record has or do not hash to their key; ignored (the trusted one stands)",
                      stacklevel=3)


def done_keys(path: Path) -> set[str]:
    """Keys of jobs that need no re-run: finished ok, or skipped as not applicable, by a record
    that has what this code writes into one (``is_complete``). Anything less (a forged
    ``{"key": K, "status": "ok"}``, a record whose fields do not hash to its key, a foreign
    tool's line) is not trusted: its job runs again, with one warning for them all (after a
    trusted record of the same job it is ignored instead: ``latest_by_key``)."""
    latest, untrusted = _latest(read_records(path), path)
    _warn_untrusted(path, len(untrusted))
    return {k for k, r in latest.items() if r.get("status") in ("ok", "skipped") and k not in untrusted}


def _warn_untrusted(where: Path | str | None, n: int) -> None:
    if n:
        warnings.warn(f"{where}: {n} record(s) marked done lack the fields a record has or do not hash to "
                      "their key; not trusted, their jobs run again (records written before 2026-12-02: "
                      "python scripts/migrate_records.py --write first)", stacklevel=3)


def is_complete(rec: dict[str, Any]) -> bool:
    """A record as ``bench.job`` writes it: the job's identity (its key the hash of its own
    config), and for ``ok`` its measurement (a finite accuracy after fine-tuning, or a fit error
    for a fit-only job); for ``skipped`` why."""
    if not all(isinstance(rec.get(f), str) for f in ("network", "dataset", "method")) or not key_matches(rec):
        return False
    if not isinstance(rec.get("seed"), int) or isinstance(rec.get("seed"), bool):
        return False
    if rec.get("status") == "skipped":
        return isinstance(rec.get("error"), str)
    value = rec.get("fit_rel_error" if rec.get("fit_only") else "acc_after_finetune")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RecordIndex:
    """The latest record of each key of one records file, read once, then only what was appended
    since (by this sweep or by another sharing the file): one sweep's resume checks, lr picks and
    claims look here instead of re-reading the whole file for each (``bench.runner``).

    Only whole lines are taken (plus a last line without its line end that is a whole record,
    as ``read_records`` counts it); a file that shrank or was replaced is read again from the
    start. Pickled (to a worker process) it keeps only its path and reads afresh there.
    ``done`` follows ``done_keys`` exactly: ok or skipped, and complete (``is_complete``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self._offset, self._inode, self._lines = 0, None, 0
        self.latest: dict[str, dict[str, Any]] = {}
        self._done: set[str] = set()
        self._untrusted: set[str] = set()
        self._shadowed = 0  # untrusted records after a trusted one of their job: ignored
        self.reads = self.bytes_read = 0  # how often the file was opened, and how much was read

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._reset()

    def refresh(self) -> "RecordIndex":
        """Take in what was appended since the last call."""
        if not self.path.exists():
            if self._offset:
                self._reset()
            return self
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                st = os.fstat(f.fileno())
                if st.st_ino != self._inode or st.st_size < self._offset:
                    self._reset()
                    self._inode = st.st_ino
                f.seek(self._offset)
                data = f.read()
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        self.reads += 1
        self.bytes_read += len(data)
        end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        tail = data[end:]
        if tail and isinstance(_parse_line(tail), dict):
            end = len(data)
        bad = []
        for raw in data[:end].splitlines():
            self._lines += 1
            rec = _parse_line(raw)
            if isinstance(rec, str):
                bad.append(f"line {self._lines}: {rec}")
            elif rec is not None:
                self._take(rec)
        self._offset += end
        _warn_bad_lines(self.path, bad)
        return self

    def _take(self, rec: dict[str, Any]) -> None:
        key = rec["key"]
        if not _fold(self.latest, self._untrusted, rec):  # as latest_by_key: the trusted one stands
            self._shadowed += 1
            return
        self._done.discard(key)
        if rec.get("status") in ("ok", "skipped") and key not in self._untrusted:
            self._done.add(key)

    def done(self) -> set[str]:
        """Keys whose jobs need no re-run (``done_keys``), as of the last ``refresh``."""
        _warn_shadowed(self.path, self._shadowed)
        _warn_untrusted(self.path, len(self._untrusted))
        return set(self._done)

    def is_done(self, key: str) -> bool:
        """Whether ``key`` is done now: what others appended since is read first (one tail read)."""
        return key in self.refresh()._done

    def append(self, record: dict[str, Any]) -> None:
        """``append_record``, then take it in (with whatever others appended before it)."""
        append_record(self.path, record)
        self.refresh()
