"""The default allocator: achieved parameter count as close to the target as the grid allows."""
import math

import pytest
from torch import nn

from bench.compressor import dense_params
from bench.registry import get_method

LAYERS = {"conv2": nn.Conv2d(6, 16, 5), "conv3": nn.Conv2d(16, 120, 5), "fc1": nn.Linear(120, 84),
          "fc2": nn.Linear(84, 10)}


@pytest.mark.parametrize("ratio", [1.5, 2, 4, 8, 16, 32, 64])
def test_svd_allocation_hits_target_within_grid_resolution(ratio):
    svd = get_method("svd")
    knobs = svd.allocate(LAYERS, ratio)
    dense = sum(dense_params(m) for m in LAYERS.values())
    achieved = sum(svd.layer_params(LAYERS[n], k) for n, k in knobs.items())
    target = dense / ratio
    # moving any one layer by one rank step cannot get closer to the target than the chosen point
    # by more than that layer's step: the achieved total is within the largest single step
    step = max(svd.layer_params(m, 2) - svd.layer_params(m, 1) for m in LAYERS.values())
    assert abs(achieved - target) <= step


def test_allocation_saturates_at_smallest_knobs():
    svd = get_method("svd")
    knobs = svd.allocate(LAYERS, 1e6)
    assert all(k == 1 for k in knobs.values())


def test_allocation_rejects_bad_ratio():
    from bench.compressor import CompressionError

    with pytest.raises(CompressionError):
        get_method("svd").allocate(LAYERS, 0)
