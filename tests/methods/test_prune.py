"""Global magnitude pruning: exact sparsity, masked forward, masks survive SGD, exact budget."""
import copy

import pytest
import torch
from torch import nn

from bench.compressor import BudgetUnreachable, dense_params
from bench.registry import get_method
from methods.prune import PrunedLayer, global_magnitude_allocation, top_k_mask


def _layers():
    torch.manual_seed(0)
    return {"conv": nn.Conv2d(3, 8, 3, padding=1, stride=2), "fc1": nn.Linear(40, 30),
            "fc2": nn.Linear(30, 7, bias=False)}


@pytest.mark.parametrize("kept", [0, 1, 17, 600, 1200])
def test_sparsity_is_exact_and_counts_match(kept):
    m = get_method("prune")
    layer = nn.Linear(40, 30)
    new = m.factorize(layer, kept)
    assert int((new.effective_weight() != 0).sum()) == kept
    assert m.layer_params(layer, kept) == m.module_params(new) == kept + 30
    assert m.params_counted_as == "non-zero weights"


def test_kept_weights_are_the_largest():
    torch.manual_seed(1)
    layer = nn.Linear(20, 10)
    new = get_method("prune").factorize(layer, 50)
    w = layer.weight.detach().abs()
    kept = w[new.mask.bool()]
    dropped = w[~new.mask.bool()]
    assert kept.min() >= dropped.max()


def test_ties_are_broken_deterministically():
    w = torch.ones(4, 5)
    mask = top_k_mask(w, 7)
    assert int(mask.sum()) == 7
    assert mask.flatten()[:7].eq(1).all() and mask.flatten()[7:].eq(0).all()


def test_masked_output_equals_dense_with_zeroed_weights():
    torch.manual_seed(2)
    for layer, x in [(nn.Linear(40, 30), torch.randn(5, 40)),
                     (nn.Conv2d(3, 8, 3, padding=1, stride=2), torch.randn(2, 3, 9, 9))]:
        new = get_method("prune").factorize(layer, 100)
        ref = copy.deepcopy(layer)
        with torch.no_grad():
            ref.weight.mul_(new.mask)
        assert torch.allclose(new(x), ref(x), atol=1e-6)
        assert torch.equal(new.effective_weight(), ref.weight)


def test_pruned_weights_stay_zero_after_sgd():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    m = get_method("prune")
    net[0] = m.factorize(net[0], 60)
    mask = net[0].mask.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        loss = nn.functional.cross_entropy(net(torch.randn(16, 10)), torch.randint(0, 3, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(net[0].mask, mask)
    assert net[0].weight[mask == 0].abs().max() == 0
    assert net[0].effective_weight()[mask == 0].abs().max() == 0
    assert int((net[0].effective_weight() != 0).sum()) == 60  # kept weights did move, none died


@pytest.mark.parametrize("ratio", [1, 1.5, 2, 4, 8, 16, 32])
def test_allocation_hits_target_within_one_weight(ratio):
    layers = _layers()
    m = get_method("prune")
    knobs = m.allocate(layers, ratio)
    dense = sum(dense_params(l) for l in layers.values())
    total = sum(m.layer_params(layers[n], k) for n, k in knobs.items())
    assert abs(total - dense / ratio) <= 1
    built = sum(m.module_params(m.factorize(layers[n], k)) for n, k in knobs.items())
    assert built == total


def test_allocation_is_one_global_threshold():
    layers = _layers()
    knobs = global_magnitude_allocation(layers, 4)
    kept_min = min(layers[n].weight.abs()[top_k_mask(layers[n].weight, k).bool()].min()
                   for n, k in knobs.items() if k)
    dropped_max = max(layers[n].weight.abs()[~top_k_mask(layers[n].weight, k).bool()].max()
                      for n, k in knobs.items() if k < layers[n].weight.numel())
    assert kept_min >= dropped_max


def test_budget_below_biases_is_an_error():
    with pytest.raises(BudgetUnreachable, match="biases"):
        get_method("prune").allocate(_layers(), 1e4)


def test_knobs_and_params_model():
    m = get_method("prune")
    layer = nn.Conv2d(3, 8, 3)
    ks = m.knobs(layer)
    assert ks[0] == 0 and ks[-1] == layer.weight.numel()
    assert m.layer_params(layer, ks[-1]) == dense_params(layer)
    assert isinstance(m.factorize(layer, 5), PrunedLayer)
