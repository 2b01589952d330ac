"""Job claims: sweeps sharing an output folder (several on one machine, or machines sharing a
filesystem) split the jobs instead of each running all of them.

A claim is one file per job key, ``<folder>/<key>`` (e.g. ``results/<suite>/claims/<key>``),
holding JSON ``{owner, host, pid, started, heartbeat}``. ``owner`` is a random token of the
``Claims`` object: a pickled copy (a worker process) owns what the original claimed, so the
process that claims, the one that heartbeats and the one that releases may differ.

Races. A new claim is created with ``os.open(O_CREAT | O_EXCL)``, which exactly one creator
wins. Every read-then-change (taking over, releasing, heartbeating) happens under an exclusive
``flock`` on ``<folder>/.lock``, held for microseconds; a process dies with its lock released,
so there is no stale lock to break. ``flock`` across machines needs what ``runs.jsonl`` appends
already need: a filesystem whose locks are shared (NFS with lockd or v4, not ``nolock``).

Stale rule: an existing claim may be taken over when
  * its host is this host and its pid is not a running process (the owner died), or
  * its file's mtime is older than ``stale_after_s`` (any host: a dead or cut-off machine).
``heartbeat`` touches the file (the stored ``heartbeat`` field is the creation time; the file's
mtime is the live one, because touching never rewrites a file another process may be taking
over), so an owner that heartbeats more often than ``stale_after_s`` keeps its claim. Pick ``stale_after_s`` well above the heartbeat interval plus the clock skew
between machines (mtimes come from the file server's clock, ages from ours). A reused pid looks
alive, so such a claim waits for the mtime rule. A file that cannot be read is stale at once:
a claim is created and written under the lock, so a reader holding the lock never meets one
being written; an empty or torn claim was left by a creator killed between create and write
(a resume right after such a kill used to leave that job "to another sweep" and exit 0).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from bench.records import OutputWriteError, write_all, write_cause

LOCK_NAME = ".lock"


class Claims:
    """Claims on job keys in ``folder``. Picklable: its state is strings and numbers only.

    ``host``/``pid`` default to the calling process's, looked up at each call (so a copy in a
    worker, or on another machine, records where it really runs); tests set them to play
    another owner."""

    def __init__(self, folder: str | os.PathLike, stale_after_s: float = 1800.0, *,
                 owner: str | None = None, host: str | None = None, pid: int | None = None):
        self.folder = str(folder)
        self.stale_after_s = float(stale_after_s)
        self.owner = owner or uuid.uuid4().hex
        self.host = host
        self.pid = pid

    def __repr__(self) -> str:
        return f"Claims({self.folder!r}, stale_after_s={self.stale_after_s}, owner={self.owner!r})"

    # -- public API -------------------------------------------------------------------------

    def try_claim(self, key: str) -> bool:
        """True if this owner now holds ``key`` (newly, by taking over a stale claim, or
        already); False if another owner's live claim holds it."""
        path = self._path(key)
        with self._locked():
            info = _read(path)
            if info is not None and info.get("owner") == self.owner:
                _touch(path)
                return True
            if info is None:
                return self._create(path)
            if not self._is_stale(path, info):
                return False
            path.unlink(missing_ok=True)  # under the lock: no other taker reads it in between
            return self._create(path)

    def heartbeat(self, key: str) -> bool:
        """Refresh the mtime of our claim on ``key``; False if it is not (any longer) ours."""
        path = self._path(key)
        with self._locked():
            if not self._mine(path):
                return False
            return _touch(path)

    def release(self, key: str) -> bool:
        """Drop our claim on ``key``; False (and nothing removed) if it is not ours."""
        path = self._path(key)
        with self._locked():
            if not self._mine(path):
                return False
            path.unlink(missing_ok=True)
            return True

    def release_all_mine(self) -> int:
        """Drop every claim of this owner (at the end of a sweep, or when it is interrupted)."""
        return sum(self.release(p.name) for p in self._claim_files())

    def holder(self, key: str) -> dict[str, Any] | None:
        """The claim on ``key`` (None if unclaimed), its ``heartbeat`` the file's mtime, for
        messages and reports."""
        path = self._path(key)
        info = _read(path)
        with contextlib.suppress(FileNotFoundError):
            return None if info is None else {**info, "heartbeat": path.stat().st_mtime}
        return None

    def is_live(self, key: str) -> bool:
        """Whether ``key`` is claimed by an owner that is not stale (alive, or heard from lately)."""
        path = self._path(key)
        info = _read(path)
        return info is not None and not self._is_stale(path, info)

    def held_elsewhere(self, key: str) -> bool:
        """Whether another owner (another sweep) holds a live claim on ``key``."""
        path = self._path(key)
        info = _read(path)
        return info is not None and info.get("owner") != self.owner and not self._is_stale(path, info)

    @contextlib.contextmanager
    def keep_alive(self, keys: list[str], interval_s: float | None = None) -> Iterator[None]:
        """Heartbeat ``keys`` from a daemon thread while the block runs (a long job)."""
        import threading

        stop = threading.Event()
        interval = interval_s if interval_s is not None else self.stale_after_s / 4

        def beat() -> None:
            while not stop.wait(interval):
                for k in keys:
                    self.heartbeat(k)

        thread = threading.Thread(target=beat, name="claims-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # -- internals --------------------------------------------------------------------------

    def _host(self) -> str:
        return self.host or socket.gethostname()

    def _pid(self) -> int:
        return self.pid if self.pid is not None else os.getpid()

    def _path(self, key: str) -> Path:
        if not key or "/" in key or "\0" in key or key.startswith("."):
            raise ValueError(f"job key {key!r} is not a plain file name")
        return Path(self.folder) / key

    def _claim_files(self) -> list[Path]:
        folder = Path(self.folder)
        return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            fd = os.open(Path(self.folder) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputWriteError(f"cannot use the claims folder {self.folder}: {write_cause(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _create(self, path: Path) -> bool:
        """Create our claim file; False if it exists (another creator won)."""
        now = time.time()
        blob = json.dumps({"owner": self.owner, "host": self._host(), "pid": self._pid(),
                           "started": now, "heartbeat": now}).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise OutputWriteError(f"cannot write the claim {path}: {write_cause(e)}") from None
        try:
            write_all(fd, blob)
            os.fsync(fd)
        except OSError as e:  # a full disk: no half-written claim stays behind to block a resume
            os.close(fd)
            path.unlink(missing_ok=True)
            raise OutputWriteError(f"cannot write the claim {path}: {write_cause(e)} (nothing claimed)") from None
        os.close(fd)
        return True

    def _mine(self, path: Path) -> bool:
        info = _read(path)
        return info is not None and info.get("owner") == self.owner

    def _is_stale(self, path: Path, info: dict[str, Any]) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > self.stale_after_s:
            return True
        if not info:  # created, never written (under the lock, so its creator died in between)
            return True
        pid = info.get("pid")
        return info.get("host") == self._host() and isinstance(pid, int) and not _pid_alive(pid)


def _read(path: Path) -> dict[str, Any] | None:
    """The claim stored at ``path``; None if there is none; {} if it cannot be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def _touch(path: Path) -> bool:
    try:
        os.utime(path, None)
        return True
    except FileNotFoundError:
        return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True
