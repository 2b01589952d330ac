"""Protocol v3 pieces: frozen-prefix fine-tuning, bias calibration, the optimizer x lr search,
and the recipe's precision key."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench import precision as prec
from bench.bias_calibration import calibrate
from bench.data import DataSplits
from bench.prefix import PrefixError, build_cache, check_cuttable, cut, first_layer
from bench.train import check_recipe, train
from bench.tuning import apply_pick, search


class Chain(nn.Module):
    """A small CifarNet-shaped network: features (conv/BN/ReLU/pool) -> flatten -> classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class NotAChain(Chain):
    """Its last pool is a function call in ``forward``, outside its children: cannot be cut."""

    def __init__(self):
        super().__init__()
        self.features = self.features[:-1]

    def forward(self, x):
        return self.classifier(torch.flatten(torch.max_pool2d(self.features(x), 2), 1))


def _data(n=96, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataSplits("toy", x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], 3, "fp", "toy")


def _trained_chain(dtype=torch.float64):
    torch.manual_seed(0)
    model = Chain().to(dtype)
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        model.train()
        model(torch.randn(64, 3, 8, 8, dtype=dtype))
    return model.eval()


class FrozenPrefix(nn.Module):
    """Reference: the whole network with every module before ``classifier.0`` frozen in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for p in model.features.parameters():
            p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.model.features.eval()
        return self

    def forward(self, x):
        return self.model(x)


RECIPE = {"epochs": 2, "batch_size": 16, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4}


def test_finetuning_from_the_cache_gives_the_weights_of_finetuning_through_the_frozen_prefix():
    data = _data()
    reference = _trained_chain()
    cached_model = copy.deepcopy(reference)
    train(FrozenPrefix(reference), data, RECIPE, seed=3, progress=False)

    first = first_layer(cached_model, ["classifier.0", "classifier.3"], data.x_val[:1])
    assert first == "classifier.0"
    cache = build_cache(cached_model, first, data, seed=3, views=1)
    assert cache.splits.x_train.shape == (64, 24)
    with cut(cached_model, first):
        train(cached_model, cache.splits, RECIPE, seed=3, progress=False)
    assert isinstance(cached_model.features[0], nn.Conv2d)  # the prefix is back
    for (name, a), (_, b) in zip(reference.state_dict().items(), cached_model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), name


def test_cached_views_are_augmented_copies_and_view_zero_is_plain():
    data = _data(dtype=torch.float32)
    data.augment = "crop-flip"
    model = _trained_chain(torch.float32)
    cache = build_cache(model, "classifier.0", data, seed=0, views=3)
    views = cache.splits.x_train_views
    assert views.shape == (3, 64, 24)
    assert torch.equal(views[0], cache.splits.x_train)
    assert not torch.allclose(views[1], views[0])
    with torch.no_grad(), cut(model, "classifier.0"):  # evaluation inputs reproduce the whole network
        assert torch.allclose(model(cache.splits.x_test), _trained_chain(torch.float32)(data.x_test), atol=1e-5)


def test_a_network_whose_forward_is_not_a_chain_is_refused_up_front():
    with pytest.raises(PrefixError, match="cannot be cut before 'classifier.0'"):
        check_cuttable(NotAChain(), ["classifier.0"], (3, 8, 8))
    check_cuttable(Chain(), ["classifier.3", "classifier.0"], (3, 8, 8))  # no error


@pytest.mark.parametrize("inplace", [False, True])  # VGG's classifier: an in-place ReLU after the layer
def test_bias_calibration_revives_dead_channels_to_the_dense_activity(inplace):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(10, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 2))
    comp = copy.deepcopy(dense)
    with torch.no_grad():
        comp[0].weight.mul_(0.01)          # a shrunken weight term ...
        comp[0].bias.fill_(-1.0)           # ... under a negative bias: every channel dead
    x = torch.randn(500, 10)
    dense_rate = (dense[0](x) > 0).float().mean(0)
    assert (comp[0](x) > 0).sum() == 0
    info = calibrate(comp, dense, ["0", "2"], x)
    rate = (comp[0](x) > 0).float().mean(0)
    assert torch.allclose(rate, dense_rate, atol=1 / 500 + 1e-9)
    assert info["0"]["dead_before"] == 8 and info["0"]["dead_after"] == 0


def _spread(v: torch.Tensor) -> float:
    return float(v.std(0, unbiased=False).pow(2).mean().sqrt())


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("method, knob", [("svd", 2), ("adtn", 2), ("tt", 1)])
def test_bias_calibration_lifts_a_starved_weight_term_before_it_shifts(method, knob, inplace):
    """A compressed layer whose output barely varies (its weight term ~1e-6 of the dense one)
    cannot be given the dense activity by a bias shift alone: rule 2 rescales its weight term
    (folded into its own parameters) to MIN_SPREAD of the dense spread, then shifts."""
    from bench.bias_calibration import CALIBRATION_RULE, MIN_SPREAD
    from bench.registry import get_method
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=inplace), nn.Linear(32, 2)).double()
    comp = copy.deepcopy(dense)
    options = {"prefit_steps": 20, "prefit_polish": 0} if method == "adtn" else {}
    comp[0] = get_method(method, **options).factorize(dense[0], knob)
    comp[0].scale_weight_(1e-6)
    with torch.no_grad():
        comp[0].bias.fill_(-0.5)
    params = sum(p.numel() for p in comp.parameters())
    x = torch.randn(400, 16, dtype=torch.float64)
    ratio = _spread(comp[0](x).detach()) / _spread(dense[0](x).detach())
    assert ratio < 1e-5
    info = calibrate(comp, dense, ["0"], x)["0"]
    assert CALIBRATION_RULE == 2
    assert info["spread_ratio"] == pytest.approx(ratio, rel=1e-6)
    assert info["weight_scale"] == pytest.approx(MIN_SPREAD / ratio, rel=1e-6)
    with torch.no_grad():
        out = comp[0](x)
        assert _spread(out) / _spread(dense[0](x)) == pytest.approx(MIN_SPREAD, rel=1e-6)
        rate, dense_rate = (out > 0).double().mean(0), (dense[0](x) > 0).double().mean(0)
    assert torch.allclose(rate, dense_rate, atol=1 / 400 + 1e-9)
    assert info["dead_after"] == info["dead_dense"]
    assert sum(p.numel() for p in comp.parameters()) == params  # folded, nothing added


def test_bias_calibration_does_not_rescale_a_layer_with_enough_spread():
    from bench.registry import get_method
    torch.manual_seed(1)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)).double()
    comp = copy.deepcopy(dense)
    comp[0] = get_method("svd").factorize(dense[0], 8)  # rank 8 of 16 keeps most of the spread
    w = comp[0].effective_weight().detach().clone()
    info = calibrate(comp, dense, ["0"], torch.randn(300, 16, dtype=torch.float64))["0"]
    assert info["spread_ratio"] > 0.25 and info["weight_scale"] == 1.0
    assert torch.equal(comp[0].effective_weight(), w)


def test_the_calibration_rule_keys_compressed_jobs_but_not_the_dense_job():
    from bench.suite import expand, load_suite
    jobs = expand(load_suite("cifar10-headline"))
    dense = [j for j in jobs if j.method == "dense"]
    comp = [j for j in jobs if j.method != "dense"]
    assert all("bias_calibration_rule" not in j.config() for j in dense)
    assert all(j.config()["bias_calibration_rule"] == 2 for j in comp)


def test_bias_calibration_leaves_an_uncompressed_layer_unchanged_and_reads_batchnorm_thresholds():
    model = _trained_chain(torch.float32)
    same = copy.deepcopy(model)
    x = torch.randn(200, 3, 8, 8)
    info = calibrate(same, model, ["features.4", "classifier.0"], x)
    assert all(v["shifted"] == 0 for v in info.values())
    assert torch.equal(same.features[4].bias, model.features[4].bias)
    # a conv followed by a BatchNorm: activity is measured after the BatchNorm's zero crossing
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.features[4].weight.mul_(0.05)
    calibrate(shifted, model, ["features.4"], x)
    after = lambda m: (m.features[:6](x) > 0).float().mean((0, 2, 3))  # noqa: E731
    assert torch.allclose(after(shifted), after(model), atol=0.02)


def _fake_run(scores):
    """``run`` for ``search``: validation accuracy from a table, FloatingPointError for None."""
    seen = []

    def run(pick):
        key = (pick["optimizer"], pick["lr"]) if isinstance(pick, dict) else pick
        seen.append(key)
        acc = scores(key)
        if acc is None:
            raise FloatingPointError("diverged")
        return acc, key
    return run, seen


def test_an_edge_pick_tries_the_next_value_out_until_it_is_interior():
    run, seen = _fake_run(lambda lr: {0.01: 50, 0.03: 60, 0.1: 70, 0.09: 75, 0.27: 72}.get(lr, 10))
    kept, rec = search(run, [0.01, 0.03, 0.1], None, extend=2)
    # 0.1 wins at the top edge -> 0.3 is tried (worse) and the pick stays interior
    assert seen == [0.01, 0.03, 0.1, 0.3] and rec["pick"] == 0.1 and not rec["pick_at_edge"]
    assert rec["extended"] == ["0.3"] and set(rec["val_acc"]) == {"0.01", "0.03", "0.1", "0.3"}


def test_extensions_are_bounded_and_a_diverged_value_stops_them():
    run, seen = _fake_run(lambda lr: 100 * lr)  # bigger is always better
    _, rec = search(run, [0.01, 0.03], None, extend=2)
    assert seen == [0.01, 0.03, 0.09, 0.27] and rec["pick"] == 0.27 and rec["pick_at_edge"]
    run, seen = _fake_run(lambda lr: None if lr > 0.05 else 100 * lr)
    _, rec = search(run, [0.01, 0.03], None, extend=2)
    assert seen == [0.01, 0.03, 0.09] and rec["pick"] == 0.03 and rec["diverged"] == [0.09]
    assert not rec["pick_at_edge"]


def test_the_grid_crosses_optimizers_and_lrs_and_picks_across_them():
    table = {("sgd", 0.01): 60, ("sgd", 0.03): 70, ("sgd", 0.1): 65,
             ("adam", 0.01): 20, ("adam", 0.03): None, ("adam", 0.1): None, ("adam", 0.00333333): 80,
             ("adam", 0.00111111): 75}
    run, seen = _fake_run(lambda k: table.get(k, 0))
    kept, rec = search(run, [0.01, 0.03, 0.1], ["sgd", "adam"], extend=2)
    assert rec["pick"] == {"optimizer": "adam", "lr": 0.00333333} and kept == ("adam", 0.00333333)
    assert rec["diverged"] == ["adam@0.03", "adam@0.1"] and rec["optimizers"] == ["sgd", "adam"]
    assert apply_pick({"lr": 1, "optimizer": "sgd", "epochs": 2}, rec["pick"]) == \
        {"lr": 0.00333333, "optimizer": "adam", "epochs": 2}


def test_every_value_diverging_fails_the_search():
    run, _ = _fake_run(lambda k: None)
    with pytest.raises(FloatingPointError, match="every value"):
        search(run, [0.1], ["sgd"], extend=1)


def test_precision_key_resolves_and_is_validated():
    cpu = torch.device("cpu")
    assert prec.resolve(None, cpu) == "fp32"           # absent: the behaviour before the key
    assert prec.resolve("fp32", cpu) == "fp32" and prec.resolve("bf16", cpu) == "bf16"
    assert prec.resolve("auto", cpu) == ("bf16" if prec.cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError, match="precision 'half'"):
        check_recipe({"precision": "half"})
    with pytest.raises(ValueError, match="scope 'some'"):
        check_recipe({"scope": "some"})
    assert "precision" not in check_recipe({})         # absent stays absent: no record re-keyed


def test_bf16_training_reports_its_precision_and_stays_close_to_fp32():
    data = _data(dtype=torch.float32)
    runs = {}
    for p in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Chain()
        out = train(model, data, {**RECIPE, "precision": p}, seed=0, progress=False)
        runs[p] = (out, model)
    assert runs["fp32"][0]["precision"] == "fp32" and runs["bf16"][0]["precision"] == "bf16"
    w32, w16 = runs["fp32"][1].classifier[3].weight, runs["bf16"][1].classifier[3].weight
    assert (w32 - w16).norm() / w32.norm() < 0.1


def test_a_dense_only_run_builds_no_prefix_cache_and_the_first_trained_job_does(tiny_suite, tmp_path):
    """Dense does not fine-tune: it is evaluated whole, and the frozen-prefix cache is built by
    the first job that trains (it used to be built by the dense job, wasted in a dense-only run)."""
    from bench.cli import main
    from bench.records import read_records

    ft = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "scope": "after_frozen_prefix",
          "cache_views": 1}
    suite = tiny_suite(methods=["dense", "svd"], seeds=[0], ratios=[4], finetune=ft, networks={"fc2": ["fc2"]})
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    recs = {r["method"]: r for r in read_records(out / suite.stem / "runs.jsonl")}
    assert "finetune_cut_before" not in recs["dense"] and "time_prefix_cache_s" not in recs["dense"]
    assert recs["svd"]["finetune_cut_before"] == "fc2" and recs["svd"]["time_prefix_cache_s"] > 0


def test_adtn_calibrates_each_layer_it_refits_during_a_staged_finetune(tiny_suite, tmp_path):
    """Order backward re-fits every layer but the last to its fine-tuned dense weight during
    fine-tuning; each such start gets the bias calibration every compressed layer gets (the
    VGG-16 headline's classifier.0 is such a layer)."""
    from bench.cli import main
    from bench.records import read_records

    ft = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "calibrate_bias": True}
    suite = tiny_suite(methods=["dense", {"method": "adtn", "options": {"prefit_steps": 5, "prefit_polish": 0}}],
                       seeds=[0], ratios=[8], finetune=ft)
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    rec = next(r for r in read_records(out / suite.stem / "runs.jsonl") if r["method"] == "adtn")
    stages = rec["extras"]["adtn"]["stages"]
    assert [s["prefit_to"] for s in stages] == ["original", "fine-tuned"]
    assert "bias_calibration" not in stages[0]  # calibrated with the others right after compression
    later = stages[1]["bias_calibration"]
    assert later["channels"] > 0 and {"spread_ratio", "weight_scale", "dead_after"} <= set(later)
