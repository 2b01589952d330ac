"""Allocation (bench/allocation.py): ``uniform``, the default, achieves a parameter count as close
to the target as the grid allows; ``minmax`` is ALDS's min-max relative error rule for any
factorisation (the option ``allocation: minmax``)."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import methods  # noqa: F401 (registers the methods)
from bench.allocation import spectral_error, uniform_ratio
from bench.compressor import dense_params
from bench.layers import effective_weight
from bench.registry import get_method
from bench.suite import SuiteError, _check_options, method_entry

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


class _CountingSizes:
    """A method of many knobs whose sizes ascend in uneven steps; counts the sizes asked."""

    name, knob_error_is_cheap = "counting", True

    def __init__(self, n_knobs):
        self.n_knobs, self.asked = n_knobs, 0

    def knobs(self, layer):
        return range(1, self.n_knobs + 1)

    def layer_params(self, layer, knob):
        self.asked += 1
        return knob * (layer.in_features + layer.out_features) + (knob * knob) // 7


def test_uniform_ratio_bisects_the_knobs_and_picks_what_a_full_scan_picks():
    """Knobs ascend in size (the contract), so ``uniform_ratio`` sizes a few of 200,000 knobs
    per layer (CP has 262,144 for VGG-16's classifier.3; sizing them all made a dry run take minutes)
    and picks what the scan of every size picks."""
    layers = {"a": nn.Linear(4096, 4096), "b": nn.Linear(512, 4096)}
    method = _CountingSizes(2 * 10 ** 5)
    sizes = {n: np.array([method.layer_params(lay, k) for k in method.knobs(lay)]) for n, lay in layers.items()}
    for ratio in (3, 64, 2191.57):
        method.asked = 0
        knobs = uniform_ratio(method, layers, ratio)
        assert method.asked < 0.02 * 2 * method.n_knobs
        target = sum(dense_params(lay) for lay in layers.values()) / ratio
        best, best_err = None, float("inf")
        for step in range(-400, 401):  # the same log-grid of per-layer ratios, every size known
            rho = ratio * 2.0 ** (step / 40)
            idx = {n: max(int(np.searchsorted(ps, dense_params(layers[n]) / rho, side="right")) - 1, 0)
                   for n, ps in sizes.items()}
            err = abs(math.log(sum(int(sizes[n][i]) for n, i in idx.items()) / target))
            if err < best_err - 1e-12:
                best, best_err = idx, err
        assert knobs == {n: i + 1 for n, i in best.items()}


def test_allocation_rejects_bad_ratio():
    from bench.compressor import CompressionError

    for allocation in ("uniform", "minmax"):
        with pytest.raises(CompressionError, match="positive"):
            get_method("svd", allocation=allocation).allocate(LAYERS, 0)


def _lenet_layers():
    torch.manual_seed(0)
    return {"conv1": nn.Conv2d(1, 6, 5, padding=2), "conv2": nn.Conv2d(6, 16, 5),
            "conv3": nn.Conv2d(16, 120, 5), "fc1": nn.Linear(120, 84), "fc2": nn.Linear(84, 10)}


def _small_layers():
    torch.manual_seed(3)
    layers = {"a": nn.Linear(12, 10), "b": nn.Linear(8, 6), "c": nn.Linear(16, 5)}
    with torch.no_grad():  # distinct spectra, so the binding layer is not a tie
        for i, layer in enumerate(layers.values()):
            layer.weight.mul_(torch.logspace(0, -1 - i, layer.weight.shape[1]))
    return layers


def test_svd_knob_error_is_the_spectral_error_of_the_replacement():
    layer = _lenet_layers()["conv3"]
    m = get_method("svd", allocation="minmax")
    for r in (1, 5, 40, 120):
        assert m.knob_error(layer, r) == pytest.approx(spectral_error(layer, effective_weight(m.factorize(layer, r))),
                                                       rel=1e-4, abs=1e-5)  # float32 factors
    assert m.knob_error(layer, 120) == 0.0  # full rank is lossless


@pytest.mark.parametrize("ratio", [1.5, 2, 3])
def test_minmax_reaches_the_brute_force_optimum(ratio):
    """Every rank combination enumerated: no combination within the budget has a smaller
    maximum error than the one minmax picks, and the pick fits the budget."""
    layers = _small_layers()
    m = get_method("svd", allocation="minmax")
    budget = sum(dense_params(l) for l in layers.values()) / ratio
    got = m.allocate(layers, ratio)
    size = sum(m.layer_params(layers[n], k) for n, k in got.items())
    worst = max(m.knob_error(layers[n], k) for n, k in got.items())
    best = min(max(m.knob_error(layers[n], k) for n, k in zip(layers, combo))
               for combo in itertools.product(*(m.knobs(l) for l in layers.values()))
               if sum(m.layer_params(layers[n], k) for n, k in zip(layers, combo)) <= budget)
    assert size <= budget
    assert worst == pytest.approx(best)


@pytest.mark.parametrize("ratio", [32, 128])
def test_svd_minmax_is_alds_svd_allocation(ratio):
    """ALDS with one group per layer is SVD with ALDS's allocation: the same ranks."""
    layers = _lenet_layers()
    svd = get_method("svd", allocation="minmax").allocate(layers, ratio)
    alds = get_method("alds-svd").allocate(layers, ratio)
    assert {n: (1, r) for n, r in svd.items()} == alds


@pytest.mark.parametrize("name, options", [("tt", {}),  # tucker and cp build ~50 fits each: about a minute
                                           pytest.param("tucker", {"n_iter_max": 2}, marks=pytest.mark.slow),
                                           pytest.param("cp", {"n_iter_max": 3}, marks=pytest.mark.slow)])
def test_minmax_lowers_the_worst_layer_error_of_a_factorisation(name, options):
    """At 32x the uniform split cuts the small conv2 hardest; minmax spends the budget where
    the error is largest, so its worst layer error is no larger (each knob it scores is built)."""
    layers = {n: l for n, l in _lenet_layers().items() if n in ("conv2", "fc1")}  # a conv and a linear, kept small
    uni, mm = get_method(name, **options), get_method(name, allocation="minmax", **options)
    budget = sum(dense_params(l) for l in layers.values()) / 32
    a, b = uni.allocate(layers, 32), mm.allocate(layers, 32)
    assert sum(mm.layer_params(layers[n], k) for n, k in b.items()) <= budget
    worst = {label: max(mm.knob_error(layers[n], k) for n, k in knobs.items()) for label, knobs in (("u", a), ("m", b))}
    assert worst["m"] <= worst["u"] + 1e-9


def test_uniform_is_the_default_and_leaves_job_options_empty():
    assert get_method("tt").allocation == "uniform"
    assert method_entry("tt")["options"] == {}
    assert get_method("tt", allocation="uniform").allocate(_lenet_layers(), 32) == get_method("tt").allocate(_lenet_layers(), 32)


def test_minmax_plans_on_trained_weights():
    assert get_method("svd").allocation_uses_weights is False
    assert get_method("svd", allocation="minmax").allocation_uses_weights is True


@pytest.mark.parametrize("name", ["alds", "alds-svd", "prune", "adtn", "dense", "nnbcd-prune"])
def test_methods_with_their_own_rule_refuse_the_option(name):
    with pytest.raises(SuiteError, match="allocation|unexpected keyword"):
        _check_options(method_entry({"method": name, "options": {"allocation": "minmax"}}))


def test_an_unknown_allocation_is_refused_by_the_suite_check():
    with pytest.raises(SuiteError, match=r"allocation 'greedy'; valid: uniform, minmax"):
        _check_options(method_entry({"method": "tt", "options": {"allocation": "greedy"}}))


@pytest.mark.parametrize("ratio", [2, 32])
def test_minmax_fills_a_single_layers_budget_between_its_scored_knobs(ratio, monkeypatch):
    """One layer, errors falling with the rank: min-max must take the largest rank that fits.
    The log-spaced grid of scored ranks alone stops short (FC-2 at 2x: rank 96 of 111 under
    rule 1); the refinement scores the ranks between the pick and the next one up."""
    import bench.allocation as alloc

    torch.manual_seed(0)
    layer = nn.Linear(784, 256)
    tt = get_method("tt", allocation="minmax")
    budget = dense_params(layer) / ratio
    ranks = sorted(tt.knobs(layer), key=lambda k: tt.layer_params(layer, k))
    assert len(ranks) > alloc.MAX_SCORED_KNOBS
    fits = max((k for k in ranks if tt.layer_params(layer, k) <= budget), key=lambda k: tt.layer_params(layer, k))
    assert tt.allocate({"fc1": layer}, ratio) == {"fc1": fits}
    monkeypatch.setattr(alloc, "MINMAX_REFINE_ROUNDS", 0)  # rule 1: the scored grid only
    assert tt.layer_params(layer, tt.allocate({"fc1": layer}, ratio)["fc1"]) < tt.layer_params(layer, fits)


def test_the_minmax_rule_is_in_the_key_of_minmax_jobs_only():
    from bench.allocation import MINMAX_RULE
    from bench.jobs import expand
    from bench.suite import load_suite

    jobs = expand(load_suite("mnist-v3"))
    minmax = [j for j in jobs if j.options.get("allocation") == "minmax"]
    assert minmax and all(j.config()["minmax_rule"] == MINMAX_RULE for j in minmax)
    assert all("minmax_rule" not in j.config() for j in jobs if j not in minmax)


def test_minmax_never_asks_a_layer_for_less_error_than_its_best_option():
    """One layer's best option (0.30) is worse than another's whole range: no threshold below
    0.30 is feasible, and the search must not look a layer up there (LeNet-5 tucker-minmax at 2x
    failed with an IndexError)."""
    from bench.allocation import Option, allocate_minmax, frontier

    fronts = {"a": frontier([Option(10, 0.5, 1), Option(20, 0.1, 2), Option(40, 0.001, 3)]),
              "b": frontier([Option(10, 0.9, 1), Option(30, 0.3, 2)])}
    picks = allocate_minmax(fronts, budget=70)
    assert {n: o.knob for n, o in picks.items()} == {"a": 3, "b": 2}
    assert {n: o.knob for n, o in allocate_minmax(fronts, budget=40).items()} == {"a": 1, "b": 2}
