"""Downloads with checksum verification (only used when files are missing and allowed)."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
from pathlib import Path

from bench.errors import InputError

TIMEOUT_S = 60


class DataFileError(InputError, ValueError):
    """A dataset file that is there but unusable (checksum mismatch, bad magic, wrong size,
    truncated gzip, garbage pickle); the message is one line naming the file and why."""


def bad_file(path: Path, why: str) -> DataFileError:
    return DataFileError(f"{path}: {why}")


def md5_of_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(urls: list[str], dest: Path, check) -> None:
    """Fetch the first URL that works into ``dest``; ``check(path)`` raises if the file is bad.

    Writes to a temporary file and renames, so a broken download never looks finished."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        tmp = Path(tempfile.mkstemp(dir=dest.parent, suffix=".part")[1])
        try:
            print(f"downloading {url}")
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
            check(tmp)
            tmp.replace(dest)
            return
        except Exception as e:  # noqa: BLE001 - try the next mirror, report all at the end
            errors.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise RuntimeError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))
