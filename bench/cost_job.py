"""A job's shape as the cost model counts it: images per split, optimizer steps, whether it
trains after a frozen prefix and which prefix cache it shares. Nothing here reads a
calibration: these are facts of the job's configuration and its dataset's registration.

Why a module of its own (issue #22): the per-stage estimates (``bench.cost_model``), the
per-step methods' work (``bench.cost_steps``) and the time budget (``bench.cost``) all count
a job the same way; this is that one count.
"""
from __future__ import annotations

import math


def dataset_sizes(name: str) -> tuple[int, int]:
    """(train, test) images of a full dataset, as its registration states (no data read)."""
    from bench.registry import dataset_spec

    sizes = dataset_spec(name).sizes
    if sizes is None:
        raise KeyError(f"dataset {name!r} was registered without sizes (register_dataset(..., sizes=(train, test)))")
    return sizes


def augments(name: str) -> bool:
    """Whether the dataset's loader names an augmentation (CIFAR's crop-flip), without reading it."""
    from bench.data import cifar

    return name in cifar.SPECS


def split_sizes(job) -> tuple[int, int, int]:
    """(train, val, test) images of a job's data config, as ``bench.data.load_splits`` cuts them."""
    n, n_test = dataset_sizes(job.dataset)
    from bench.data import val_count

    n_val = val_count(n, job.data.get("val_fraction", 0.1))
    n_train = n - n_val
    if job.data.get("train_subset"):
        n_train = min(n_train, int(job.data["train_subset"]))
    return n_train, n_val, n_test


def train_steps(epochs: float, n: int, batch_size: int) -> tuple[int, int]:
    """(optimizer steps, validation passes) of ``bench.train.train``: fractional epochs are a
    share of an epoch's steps; no epochs is one validation pass and no step."""
    per_epoch = max(1, n // int(batch_size))
    if epochs <= 0:
        return 0, 1
    steps = max(1, round(epochs * per_epoch))
    return steps, math.ceil(steps / per_epoch)


def scoped(job) -> bool:
    """Whether the job fine-tunes after a frozen prefix (and so needs its group's cache); a
    method that does not fine-tune (dense) evaluates the whole network instead."""
    from bench.registry import METHODS

    return (not job.fit_only and (job.finetune or {}).get("scope", "all") == "after_frozen_prefix"
            and getattr(METHODS.get(job.method), "finetunes", True))


def cache_group(job) -> tuple | None:
    """What makes jobs share a frozen-prefix cache (``bench.job._scoped``: their baseline, the
    layers, the views, the precision), or None when the job needs none."""
    if not scoped(job):
        return None
    ft = job.finetune
    return (job.baseline_key, tuple(job.layers), int(ft.get("cache_views", 4)), ft.get("precision"))
