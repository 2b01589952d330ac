"""Writing a file so that a reader sees the old one or the new one whole, never half of it.

Checkpoints, kept starts, trial journals and training states are written here: by tmp + fsync +
rename over the target + fsync of the directory, with the permissions ``open`` would give.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.records import OutputWriteError, write_cause


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: read once, at import (in the main thread): setting and restoring it later could race a worker thread
_UMASK = _read_umask()


def _file_mode() -> int:
    """0o666 less the process umask: what ``open`` would give (mkstemp's 0o600 would keep a
    baseline shared across users and machines from being read)."""
    return 0o666 & ~_UMASK


def atomic_write(path: Path, write) -> None:
    """``write(file)`` into a tmp file, fsync it, rename it over ``path``, fsync the dir; any
    failure (a full disk) leaves ``path`` as it was and raises ``OutputWriteError``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise OutputWriteError(f"cannot write {path}: {write_cause(e)} (the file is left as it was)") from None
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
