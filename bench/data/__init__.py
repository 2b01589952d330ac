"""Datasets as whole in-memory tensors, with a validation split carved from training data.

A loader registered with ``@register_dataset(name, shape=..., classes=...)`` returns a
``RawDataset`` (images as float32 in [0, 1], NCHW); ``load_splits`` normalises, splits and
fingerprints it. A method's fine-tuning sees ``DataSplits.train_val()`` only: no test split.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench.errors import InputError
from bench.registry import DATASETS

VAL_SPLIT_SEED = 20260501  # fixed: every job of a suite shares the same validation split

@dataclass
class RawDataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    #: name of a training augmentation in ``bench.augment`` (e.g. "crop-flip"), or None
    augment: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class DataSplits:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    fingerprint: str
    source: str
    augment: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: (views, n, ...) precomputed versions of the training inputs, view 0 = ``x_train``; each
    #: drawn sample takes one at random (frozen-prefix caches, ``bench.prefix``), or None
    x_train_views: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "DataSplits":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return DataSplits(**moved)

    def train_val(self) -> "TrainValSplits":
        """The view a method's fine-tuning gets: the test set stays with the runner."""
        return TrainValSplits(self.name, self.x_train, self.y_train, self.x_val, self.y_val, self.num_classes,
                              self.fingerprint, self.augment, self.x_train_views)


@dataclass
class TrainValSplits:
    """Training and validation splits only (``FinetuneContext.data``)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    fingerprint: str
    augment: str | None = None
    x_train_views: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def default_data_dir() -> Path:
    """``$TNBENCH_DATA``, else ``./data``. Set but blank it is refused: ``Path("")`` would
    quietly mean the working folder, neither the default nor a folder anyone named."""
    value = os.environ.get("TNBENCH_DATA")
    if value is None:
        return Path("data")
    if not value.strip():
        raise InputError(f"TNBENCH_DATA {value!r}: an empty value; give a folder, or unset it for ./data")
    if Path(value).exists() and not Path(value).is_dir():
        raise InputError(f"TNBENCH_DATA {value}: a file, not a folder; give a folder, or unset it for ./data")
    return Path(value)


def fingerprint(*arrays: torch.Tensor) -> str:
    """A short content hash of the arrays a job used (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.contiguous().cpu()
        h.update(f"{tuple(a.shape)}{a.dtype}".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()[:16]


_CACHE: dict[tuple, RawDataset] = {}


def register_loaders() -> None:
    """Import the built-in loader modules (each registers its datasets)."""
    import bench.data.cifar  # noqa: F401
    import bench.data.digits  # noqa: F401
    import bench.data.idx  # noqa: F401


def load_raw(name: str, data_dir: Path | None = None, download: bool = True) -> RawDataset:
    loader: Callable[..., RawDataset] = DATASETS.get(name).loader
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    key = (name, str(data_dir.resolve()))
    if key not in _CACHE:
        _CACHE[key] = loader(data_dir=data_dir, download=download)
    return _CACHE[key]


def val_count(n: int, val_fraction: float) -> int:
    """Images the validation split takes of ``n`` training images (``load_splits``' cut; the
    cost model and validation size the splits with it)."""
    return int(round(n * val_fraction))


def load_splits(name: str, data_dir: Path | None = None, val_fraction: float = 0.1,
                train_subset: int | None = None, download: bool = True) -> DataSplits:
    """Normalised train/val/test tensors. ``train_subset`` keeps the first n training images
    (after the fixed shuffle) for quick runs; the validation split is taken before it."""
    raw = load_raw(name, data_dir, download)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = raw.x_train.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    n_val = val_count(n, val_fraction)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_subset:
        train_idx = train_idx[: int(train_subset)]
    mean = torch.tensor(raw.mean).view(1, -1, 1, 1)
    std = torch.tensor(raw.std).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).contiguous()

    x_tr, y_tr = raw.x_train[train_idx], raw.y_train[train_idx]
    x_va, y_va = raw.x_train[val_idx], raw.y_train[val_idx]
    return DataSplits(
        name=name, x_train=norm(x_tr), y_train=y_tr, x_val=norm(x_va), y_val=y_va,
        x_test=norm(raw.x_test), y_test=raw.y_test, num_classes=raw.num_classes,
        fingerprint=fingerprint(x_tr, y_tr, x_va, y_va, raw.x_test, raw.y_test),
        source=raw.source, augment=raw.augment, warnings=list(raw.warnings))


def verify_dataset(name: str, data_dir: Path | None = None, download: bool = True) -> None:
    """Check a dataset's files before any job runs, so a bad file is named once, up front
    (checksum, magic, size), not in every job's record. Loaders that can check offer a
    ``verify(name, data_dir, download) -> bool`` (whether the files are all here) in their
    module. Missing files that may be downloaded are fetched now, once (the download checks
    their checksums): a machine without internet fails here, not in every job."""
    import importlib

    loader = DATASETS.get(name).loader
    check = getattr(importlib.import_module(loader.__module__), "verify", None)
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if check is not None and not check(name, folder, download):
        loader(folder, download)

