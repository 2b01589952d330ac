"""``mnist`` and ``fashion-mnist`` from the official IDX files (gzipped or not).

Files are verified by the MD5 of their *decompressed* content, so any faithful copy is
accepted however it was compressed (Debian's Fashion-MNIST, say)."""
from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from bench.data import RawDataset
from bench.data.download import bad_file, download
from bench.registry import register_dataset

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

SPECS = {
    "mnist": dict(
        subdirs=("MNIST/raw", "MNIST", "mnist"),
        md5=("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
             "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        mean=(0.1307,), std=(0.3081,), system_dirs=()),
    "fashion-mnist": dict(
        subdirs=("FashionMNIST/raw", "FashionMNIST", "fashion-mnist"),
        md5=("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
             "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        mean=(0.2860,), std=(0.3530,), system_dirs=("/usr/share/datasets/fashion-mnist",)),
}


#: decompressed size of each official file (IDX header + payload); nothing larger is read, so a
#: gzip bomb in the data folder is refused instead of filling memory
SIZES = {"train-images-idx3-ubyte": 16 + 60000 * 28 * 28, "train-labels-idx1-ubyte": 8 + 60000,
         "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28, "t10k-labels-idx1-ubyte": 8 + 10000}


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's content, gunzipped if it is gzip, at most ``limit`` bytes once decompressed; a
    broken gzip or a larger content is a DataFileError naming the file."""
    if limit is not None and path.stat().st_size > limit + (1 << 20):  # a gzip header is far smaller
        raise bad_file(path, f"{path.stat().st_size:,} bytes, more than the official file's {limit:,}")
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        if limit is None:
            return gzip.decompress(data)
        out = bytearray()
        while data:  # concatenated gzip members, like gzip.decompress
            d = zlib.decompressobj(wbits=31)
            out += d.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise bad_file(path, f"decompresses to more than the official file's {limit:,} bytes")
            if not d.eof:
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            data = d.unused_data.lstrip(b"\x00")
        return bytes(out)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise bad_file(path, f"truncated or corrupt gzip ({e})") from None


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (magic 0x0000 08 nd, big-endian dims, uint8 payload)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"bad magic 0x{data[:4].hex()}: not an IDX file of unsigned bytes (magic 0x000008nn)")
    nd = data[3]
    if len(data) < 4 + 4 * nd:
        raise ValueError(f"wrong size: {len(data)} bytes, shorter than the header of {nd} dimensions")
    dims = np.frombuffer(data, dtype=">u4", count=nd, offset=4).astype(int)
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd)
    if payload.size != int(np.prod(dims)):
        shape = " x ".join(str(d) for d in dims.tolist())
        raise ValueError(f"wrong size: IDX payload has {payload.size:,} bytes, header says {shape} = "
                         f"{int(np.prod(dims)):,}")
    return payload.reshape(tuple(dims))


def check_file(path: Path, stem: str, md5: str) -> bytes:
    """The decompressed content of the official ``stem``; anything else is a DataFileError
    saying why (truncated gzip, bad magic, wrong size, checksum mismatch)."""
    data = read_bytes(path, SIZES.get(stem))
    got = hashlib.md5(data).hexdigest()
    if got == md5:
        return data
    try:
        parse_idx(data)
    except ValueError as e:
        raise bad_file(path, f"{e}; not the official {stem}") from None
    raise bad_file(path, f"checksum mismatch: decompressed MD5 {got} is not the official {md5} for {stem}; "
                         "the file is corrupt or not the official release")


def verify(name: str, data_dir: Path, download: bool = False) -> bool:
    """Check every file of ``name`` before any job runs (the checks loading does). Missing
    files are a FileNotFoundError unless ``download``; returns whether every file is here
    (False: loading would download some)."""
    present = True
    for stem, md5 in zip(FILES, SPECS[name]["md5"]):
        path = _find(name, Path(data_dir), stem)
        if path is not None:
            check_file(path, stem, md5)
        elif not download:
            raise FileNotFoundError(_missing(name, Path(data_dir), "downloading is disabled"))
        else:
            present = False
    return present


def _find(name: str, data_dir: Path, stem: str) -> Path | None:
    spec = SPECS[name]
    for folder in [data_dir / s for s in spec["subdirs"]] + [data_dir] + [Path(d) for d in spec["system_dirs"]]:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    return None


def _load_verified(name: str, data_dir: Path, download_ok: bool) -> list[bytes]:
    spec = SPECS[name]
    contents = []
    for stem, md5 in zip(FILES, spec["md5"]):
        path = _find(name, data_dir, stem)
        if path is None and download_ok:
            path = data_dir / spec["subdirs"][0] / f"{stem}.gz"

            def check(p: Path, stem=stem, md5=md5) -> None:
                check_file(p, stem, md5)

            try:
                download([m + f"{stem}.gz" for m in spec["mirrors"]], path, check)
            except RuntimeError as e:
                raise FileNotFoundError(_missing(name, data_dir, str(e))) from None
        if path is None:
            raise FileNotFoundError(_missing(name, data_dir, "downloading is disabled"))
        contents.append(check_file(path, stem, md5))
    return contents


def _missing(name: str, data_dir: Path, why: str) -> str:
    spec = SPECS[name]
    where = ", ".join(str(data_dir / s) for s in spec["subdirs"])
    return (f"{name}: expected {', '.join(f + '.gz' for f in FILES)} in one of {where} "
            f"(or pass --data-dir / set TNBENCH_DATA); {why}")


def _load(name: str, data_dir: Path, download: bool) -> RawDataset:
    xtr, ytr, xte, yte = (parse_idx(b) for b in _load_verified(name, Path(data_dir), download))
    spec = SPECS[name]

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    return RawDataset(x_train=images(xtr), y_train=torch.from_numpy(ytr.astype(np.int64)),
                      x_test=images(xte), y_test=torch.from_numpy(yte.astype(np.int64)),
                      num_classes=10, mean=spec["mean"], std=spec["std"], source=str(data_dir))


@register_dataset("mnist", shape=(1, 28, 28), classes=10, sizes=(60000, 10000))
def load_mnist(data_dir: Path, download: bool = True) -> RawDataset:
    return _load("mnist", data_dir, download)


@register_dataset("fashion-mnist", shape=(1, 28, 28), classes=10, sizes=(60000, 10000))
def load_fashion_mnist(data_dir: Path, download: bool = True) -> RawDataset:
    return _load("fashion-mnist", data_dir, download)
