"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images) — the embedded
dataset of the smoke suite; nothing to download. A fixed 80/20 train/test split."""
from __future__ import annotations

import torch

from bench.data import RawDataset
from bench.registry import register_dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@register_dataset("digits", shape=(1, 8, 8), classes=10, sizes=(1438, 359))
def load_digits(data_dir=None, download: bool = False) -> RawDataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(y) * TEST_FRACTION)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean().item(), x[train].std().item()
    return RawDataset(x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
                      num_classes=10, mean=(mean,), std=(std,), source="sklearn.datasets.load_digits")
