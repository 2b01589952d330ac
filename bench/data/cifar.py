"""``cifar10`` and ``cifar100`` from the official python-pickle releases.

A local folder (``<data_dir>/cifar-10-batches-py`` or ``<data_dir>/cifar-100-python``) is
checked for format, shapes, counts and label ranges; files whose MD5 is not the official one
are loaded with a warning that also goes into the job records (the records carry a data
fingerprint from ``bench.data.load_splits``). When the folder is missing and downloading is
allowed, the official archive is fetched, its MD5 verified, and extracted safely.

The pickles are read with a restricted unpickler that only rebuilds numpy arrays, so a
malicious file cannot run code.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data import RawDataset
from bench.data.download import DataFileError, bad_file, download, md5_of_file
from bench.registry import register_dataset

IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    archive: str
    archive_md5: str
    train: tuple[tuple[str, str], ...]  # (file, official MD5)
    test: tuple[tuple[str, str], ...]
    rows: dict  # file -> official number of images
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str = ""

    def __post_init__(self) -> None:
        if not self.url:
            object.__setattr__(self, "url", f"https://www.cs.toronto.edu/~kriz/{self.archive}")

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.train + self.test)


# Official MD5s: https://www.cs.toronto.edu/~kriz/cifar.html (archives) and torchvision's
# datasets/cifar.py (extracted files). Means/stds: per-channel pixel statistics of the
# training sets (CIFAR10.md re-derives the CIFAR-10 ones).
SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
               ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
               ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
               ("data_batch_4", "634d18415352ddfa80567beed471001a"),
               ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        rows={"data_batch_1": 10000, "data_batch_2": 10000, "data_batch_3": 10000,
              "data_batch_4": 10000, "data_batch_5": 10000, "test_batch": 10000},
        label_key=b"labels", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec(
        name="cifar100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        rows={"train": 50000, "test": 10000},
        label_key=b"fine_labels", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


def _numpy_global(module: str, name: str):
    """Resolve the few numpy callables an ndarray pickle needs (numpy 1.x and 2.x names)."""
    import importlib

    for mod in (module.replace("numpy.core.", "numpy._core."), module):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays; refuses every other global.

    ``_codecs.encode`` is how Python 3 writes bytes in protocol-2 pickles (official files
    are Python 2 pickles and need only the numpy names)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            return codecs.encode
        return _numpy_global(module, name)


def parse_batch(raw: bytes, path: Path, spec: CifarSpec, expected_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 images (n, 3, 32, 32), int64 labels (n,)), all checked."""
    def bad(why: str) -> DataFileError:
        return bad_file(path, f"not a valid {spec.name} batch file ({why})")

    try:
        entry = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - truncated/garbage pickles raise many types
        raise bad(f"cannot unpickle: {type(e).__name__}: {e}") from None
    if not isinstance(entry, dict):
        raise bad(f"expected a dict, got {type(entry).__name__}")
    entry = {k.encode() if isinstance(k, str) else k: v for k, v in entry.items()}
    for key in (b"data", spec.label_key):
        if key not in entry:
            raise bad(f"missing key {key!r}; keys: {sorted(entry)}")
    data = entry[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"b'data' must be a uint8 array of shape (n, {IMAGE_BYTES}), got {desc}")
    try:
        labels = np.asarray(entry[spec.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise bad(f"labels are not integers: {e}") from None
    if labels.shape != (data.shape[0],):
        raise bad(f"{labels.shape[0] if labels.ndim == 1 else labels.shape} labels for {data.shape[0]} images")
    if data.shape[0] != expected_rows:
        raise bad(f"{data.shape[0]} images, the official file has {expected_rows}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise bad(f"labels span [{labels.min()}, {labels.max()}], expected 0..{spec.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def find_folder(spec: CifarSpec, data_dir: Path) -> Path | None:
    """``data_dir/<official folder>``, or ``data_dir`` itself if it holds the files."""
    for folder in (data_dir / spec.folder, data_dir):
        if all((folder / f).is_file() for f in spec.files):
            return folder
    return None


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing any path that leaves ``dest``."""
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                target = (root / m.name).resolve()
                if not (m.isfile() or m.isdir()):
                    raise bad_file(archive, f"refusing member {m.name!r} (not a regular file or folder)")
                if Path(m.name).is_absolute() or (target != root and root not in target.parents):
                    raise bad_file(archive, f"refusing member {m.name!r} (path leaves {root})")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and patched 3.8+): belt and braces
                tar.extractall(root, members=members, filter="data")
            else:
                tar.extractall(root, members=members)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise bad_file(archive, f"truncated or corrupt archive ({type(e).__name__}: {e})") from None


def check_archive(spec: CifarSpec, path: Path, shown: Path | None = None) -> None:
    """The official archive or a DataFileError naming it (``shown``: the name a download
    will have, rather than its temporary file)."""
    got = md5_of_file(path)
    if got != spec.archive_md5:
        raise bad_file(shown or path, f"checksum mismatch: MD5 {got} is not the official {spec.archive_md5}")


def _fetch(spec: CifarSpec, data_dir: Path) -> Path:
    """Download (if not already there) and verify the official archive, then extract it."""
    archive = data_dir / spec.archive
    if archive.is_file():
        check_archive(spec, archive)
    else:
        download([spec.url], archive, lambda p: check_archive(spec, p, shown=archive))
    _safe_extract(archive, data_dir)
    folder = find_folder(spec, data_dir)
    if folder is None:
        raise FileNotFoundError(f"{archive} did not contain {', '.join(spec.files)} under {spec.folder}/")
    return folder


def _missing(spec: CifarSpec, data_dir: Path, why: str) -> str:
    folder = data_dir / spec.folder
    lacking = [f for f in spec.files if not (folder / f).is_file()] if folder.is_dir() else []
    partial = f" ({folder} lacks {', '.join(lacking)})" if lacking else ""
    return (f"{spec.name}: expected {', '.join(spec.files)} in {folder}{partial} "
            f"(the official python version, {spec.url}, extracted; or pass --data-dir / set "
            f"TNBENCH_DATA); {why}")


def load_folder(spec: CifarSpec, folder: Path) -> RawDataset:
    """Read and check every batch of a local copy; warn if it is not the official files."""
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unofficial = []
    for fname, md5 in spec.train + spec.test:
        path = folder / fname
        raw = path.read_bytes()
        if hashlib.md5(raw).hexdigest() != md5:
            unofficial.append(fname)
        parts[fname] = parse_batch(raw, path, spec, spec.rows[fname])

    def join(names) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([parts[f][0] for f, _ in names])
        y = np.concatenate([parts[f][1] for f, _ in names])
        return torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y)

    x_train, y_train = join(spec.train)
    x_test, y_test = join(spec.test)
    notes = []
    if unofficial:
        notes.append(f"{spec.name}: {folder} is not the official release (MD5 differs for "
                     f"{', '.join(unofficial)}); loaded anyway after format checks, results "
                     "carry this data's fingerprint")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    return RawDataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      num_classes=spec.num_classes, mean=spec.mean, std=spec.std,
                      source=str(folder), augment="crop-flip", warnings=notes)


def verify(name: str, data_dir: Path, download: bool = False) -> bool:
    """Check a local copy before any job runs: official files pass on their MD5, others get the
    format checks loading does (they load with a warning); a local archive is checked when it
    would be extracted. Missing files are a FileNotFoundError unless ``download``; returns
    whether the batch files are here (False: loading would extract or download them)."""
    spec, data_dir = SPECS[name], Path(data_dir)
    folder = find_folder(spec, data_dir)
    if folder is not None:
        for fname, md5 in spec.train + spec.test:
            path = folder / fname
            if md5_of_file(path) != md5:
                parse_batch(path.read_bytes(), path, spec, spec.rows[fname])
        return True
    if not download:
        raise FileNotFoundError(_missing(spec, data_dir, "downloading is disabled"))
    if (data_dir / spec.archive).is_file():
        check_archive(spec, data_dir / spec.archive)
    return False


def load_cifar(name: str, data_dir: Path, download: bool = True) -> RawDataset:
    spec = SPECS[name]
    data_dir = Path(data_dir)
    folder = find_folder(spec, data_dir)
    if folder is None:
        if not download:
            raise FileNotFoundError(_missing(spec, data_dir, "downloading is disabled"))
        try:
            folder = _fetch(spec, data_dir)
        except RuntimeError as e:  # every mirror failed
            raise FileNotFoundError(_missing(spec, data_dir, str(e))) from None
    return load_folder(spec, folder)


def official_sizes(name: str) -> tuple[int, int]:
    """(train, test) images of the official files, from the spec the loader checks them against."""
    spec = SPECS[name]
    return sum(spec.rows[f] for f, _ in spec.train), sum(spec.rows[f] for f, _ in spec.test)


@register_dataset("cifar10", shape=(3, 32, 32), classes=10, sizes=official_sizes("cifar10"))
def load_cifar10(data_dir: Path, download: bool = True) -> RawDataset:
    return load_cifar("cifar10", data_dir, download)


@register_dataset("cifar100", shape=(3, 32, 32), classes=100, sizes=official_sizes("cifar100"))
def load_cifar100(data_dir: Path, download: bool = True) -> RawDataset:
    return load_cifar("cifar100", data_dir, download)
