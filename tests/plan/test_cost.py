"""The cost model (bench/cost.py), its calibration (bench/perf/calibrate.py), suite priorities
and the pre-run skips (budget_tolerance, factorize_time_cap_s): units, on the digits suite."""
import json
import math

import pytest
import torch

import bench.cost
from bench.cli import main
from bench.cost import Budget, CostModel, fit_power_law, split_sizes
from bench.cost_records import estimated_as_ran, ran_trials
from bench.suite import tuner_keys
from bench.records import read_records
from bench.plan import picks_lr, tuner_key
from bench.runner import planned_skip, tuning_passes
from bench.suite import SuiteError, expand, load_suite
from bench.layers import get_layer
from bench.registry import get_method
from bench.suite_check import meta_network


def calibration(train=1000.0, evals=10000.0, factorize=None, networks=("digitnet",), precisions=None, **extra):
    """A calibration dict with round numbers, so estimates are exact (no step floor unless
    ``step_floor_s`` is given; ``precisions``: per-precision speeds of every network)."""
    nets = {n: {"train_img_s": train, "eval_img_s": evals, "batch": 64} for n in networks}
    for net in nets.values():
        if precisions is not None:
            net["precisions"] = precisions
    return {"version": 1, "device": "cpu", "device_name": "test", "threads": 1, "created": "t0",
            "networks": nets, "factorize": factorize or {}, "job_overhead_s": {}, "step_floor_s": 0.0, **extra}


def write_cal(path, **kw):
    path.write_text(json.dumps(calibration(**kw)))
    return path


#: bf16 four times as fast as fp32, which equals the top-level (default precision) figures
BF16 = {"bf16": {"train_img_s": 4000.0, "eval_img_s": 40000.0}, "fp32": {"train_img_s": 1000.0, "eval_img_s": 10000.0}}
N_TRAIN, N_VAL, N_TEST = 1294, 144, 359  # digits: 1,438 train images, 10 % val; 359 test


def test_power_law_fit_recovers_exponent():
    a, b = fit_power_law([(n, 3e-6 * n ** 1.5) for n in (1e3, 1e4, 1e5)])
    assert b == pytest.approx(1.5) and a == pytest.approx(3e-6)
    assert fit_power_law([(100, 1.0), (1000, 0.5)])[1] == 0  # a time falling with size is noise


def test_steps_follow_bench_train():
    assert bench.cost.train_steps(0.5, 1294, 64) == (10, 1)   # 20 steps an epoch, half of them
    assert bench.cost.train_steps(2, 1294, 64) == (40, 2)
    assert bench.cost.train_steps(0, 1294, 64) == (0, 1)      # no epochs: one val pass
    assert bench.cost.train_steps(1, 50, 64) == (1, 1)        # fewer images than a batch: one step


def test_job_cost_formula_counts_optimizers_times_lrs_on_the_tuning_seed_only(tiny_suite):
    suite = load_suite(str(tiny_suite(seeds=[0, 1], ratios=[8], lr_grid=[0.001, 0.01, 0.1],
                                      optimizer_grid=["sgd", "adam"], lr_extend=2)))
    jobs = expand(suite)
    model = CostModel(calibration(factorize={"svd": {"a": 1e-3, "b": 1.0}}))
    svd = {j.seed: j for j in jobs if j.method == "svd"}
    dense = next(j for j in jobs if j.method == "dense" and j.seed == 0)
    assert tuner_keys(jobs) == {svd[0].key}  # dense picks no lr: no tuning job
    assert split_sizes(svd[0]) == (N_TRAIN, N_VAL, N_TEST)
    assert model.trials(svd[0], tuning=True) == 8      # 2 optimizers x 3 lrs + lr_extend 2
    assert model.trials(svd[1], tuning=False) == 1
    assert model.trials(dense, tuning=True) == 1       # dense tunes nothing
    fact = 1e-3 * (32 * 16 * 9 + 128 * 64)  # conv2 (32x16x3x3) and fc1 (64->128) weights
    assert model.factorize_s(svd[0]) == pytest.approx(12.8)
    one = 10 * 64 / 1000 + 1 * N_VAL / 10000  # finetune 0.5 epoch: 10 steps of 64, one val pass
    evals = (2 * N_TEST + N_VAL) / 10000      # test before and after, val after
    assert one == pytest.approx(0.6544) and evals == pytest.approx(0.0862)
    assert model.stages(svd[1], tuning=False) == pytest.approx(
        {"baseline": 0.0, "cache": 0.0, "factorize": fact, "finetune": one, "eval": evals})
    assert model.job_s(svd[0], tuning=True) == pytest.approx(fact + 8 * (one + N_VAL / 10000) + evals)
    assert model.job_s(svd[0], tuning=True) == pytest.approx(12.8 + 5.3504 + 0.0862)
    # a record is estimated with the trials it made (6 here, no extension), not the expected 8
    ran = {"lr_tuning": {"tuned_here": True, "val_acc": {f"{o}@{lr}": 50.0 for o in ("sgd", "adam")
                                                          for lr in (0.001, 0.01, 0.1)}}}
    assert ran_trials(ran) == 6 and ran_trials({"lr_tuning": {"tuned_here": False}}) is None
    assert estimated_as_ran(model, svd[0], ran, True)["finetune"] == pytest.approx(6 * (one + N_VAL / 10000))
    assert estimated_as_ran(model, svd[1], {}, False)["finetune"] == pytest.approx(one)
    base = 40 * 64 / 1000 + (2 * N_VAL + N_TEST) / 10000  # 2 epochs: 40 steps, 2 val passes, the test
    assert model.baseline_s(dense) == pytest.approx(2.6247)
    assert model.job_s(dense, True, with_baseline=True) == pytest.approx(base + evals)
    total, per_job = model.suite_s(jobs)
    assert len(per_job) == len(jobs) == 4
    assert total == pytest.approx(2 * base + 2 * evals + 2 * fact + 8 * (one + N_VAL / 10000) + one + 2 * evals)


def test_recipe_precision_picks_the_calibrated_speed(tiny_suite):
    """bf16 runs at the bf16 figures, fp32 at the fp32 ones, ``auto`` as the calibration
    resolved it; evaluations outside training run in the default precision (fp32 on a CPU);
    a calibration without precisions uses its one figure for all."""
    def svd_job(precision):
        suite = tiny_suite(ratios=[8], finetune={"epochs": 0.5, "batch_size": 64, "lr": 0.01, "precision": precision},
                           train={"epochs": 2, "batch_size": 64, "lr": 0.05, "precision": precision})
        return next(j for j in expand(load_suite(str(suite))) if j.method == "svd")

    new = CostModel(calibration(precisions=BF16, auto_precision="bf16"))
    old = CostModel(calibration())
    bf16, fp32, auto = svd_job("bf16"), svd_job("fp32"), svd_job("auto")
    assert new.speed("digitnet", "train", "bf16") == 4000 and new.speed("digitnet", "eval", "fp32") == 10000
    assert new.precision("auto") == "bf16" and new.precision(None) == "fp32"
    assert new.finetune_s(bf16, False) == pytest.approx(10 * 64 / 4000 + N_VAL / 40000)  # 0.1636
    assert new.finetune_s(bf16, False) == pytest.approx(0.1636)
    assert new.finetune_s(fp32, False) == pytest.approx(0.6544)
    assert new.finetune_s(auto, False) == pytest.approx(0.1636)
    assert new.baseline_s(bf16) == pytest.approx(40 * 64 / 4000 + 2 * N_VAL / 40000 + N_TEST / 10000)  # 0.6831
    assert new.evals_s(bf16) == pytest.approx((2 * N_TEST + N_VAL) / 10000)  # default precision: fp32
    assert old.finetune_s(bf16, False) == pytest.approx(0.6544)  # no precisions: the top-level figure
    import torch
    from bench.precision import resolve
    # a calibration that did not record what auto was: this machine's CPU decides
    assert CostModel(calibration(precisions=BF16)).precision("auto") == resolve("auto", torch.device("cpu"))


#: FC-2 on MNIST cut before fc2: its FLOPs (2 x 256 x 10) of the whole (+ 2 x 784 x 256)
FC2_SHARE = 5120 / 406528


def fc2_jobs(tiny_suite, scope, seeds=(0,)):
    suite = tiny_suite(datasets=["mnist"], networks={"fc2": ["fc2"]}, ratios=[8], seeds=list(seeds),
                       finetune={"epochs": 1, "batch_size": 64, "lr": 0.01, "scope": scope})
    return expand(load_suite(str(suite)))


def test_frozen_prefix_costs_the_suffix_and_its_cache_once_per_baseline(tiny_suite):
    model = CostModel(calibration(networks=("fc2",), factorize={"svd": {"a": 0.0, "b": 1.0}}, step_floor_s=1e-3))
    whole = {j.method: j for j in fc2_jobs(tiny_suite, "all")}
    jobs = fc2_jobs(tiny_suite, "after_frozen_prefix", seeds=(0, 1))
    cut = {(j.method, j.seed): j for j in jobs}
    assert model.cut(cut[("svd", 0)]) == ("fc2", pytest.approx(FC2_SHARE))
    # MNIST: 54,000 train, 6,000 val, 10,000 test; 1 epoch = 843 steps of 64
    assert model.finetune_s(whole["svd"], False) == pytest.approx(843 * 64 / 1000 + 6000 / 10000)  # 54.552
    # after the cut a step's FLOPs would take 0.8 ms: the 1 ms floor holds
    assert model.finetune_s(cut[("svd", 0)], False) == pytest.approx(843 * 1e-3 + FC2_SHARE * 6000 / 10000)
    assert model.finetune_s(cut[("svd", 0)], False) == pytest.approx(0.85056, abs=1e-5)
    assert model.evals_s(cut[("svd", 0)]) == pytest.approx(FC2_SHARE * 26000 / 10000)
    cache = (1 - FC2_SHARE) * (54000 + 6000 + 10000) / 10000  # MNIST does not augment: one view
    assert model.cache_s(cut[("svd", 0)]) == pytest.approx(cache) and model.cache_s(whole["svd"]) == 0
    assert model.stages(cut[("svd", 0)], False)["cache"] == 0.0  # the group pays it, not each job
    total, per_job = model.suite_s(jobs)
    base = model.baseline_s(cut[("dense", 0)])
    assert base == pytest.approx(1686 * 64 / 1000 + (2 * 6000 + 10000) / 10000)  # 2 epochs: 1,686 steps
    dense, svd = 26000 / 10000, 843 * 1e-3 + FC2_SHARE * 32000 / 10000  # dense: the whole network, no cache
    assert model.evals_s(cut[("dense", 0)]) == pytest.approx(dense)
    for seed in (0, 1):  # each seed's group: the baseline on its first job, the cache on the first that trains
        assert per_job[cut[("dense", seed)].key] == pytest.approx(base + dense)
        assert per_job[cut[("svd", seed)].key] == pytest.approx(cache + svd)
    assert total == pytest.approx(2 * (base + cache + dense + svd))
    assert total == pytest.approx(2 * (110.104 + 6.91184 + 2.6 + 0.88330), abs=1e-4)


def test_cifar_cache_takes_every_view_in_the_finetuning_precision():
    jobs = [j for j in expand(load_suite("cifar10-headline", ["protocol.seeds=[0]"])) if j.method != "dense"]
    model = CostModel(calibration(networks=("vgg16",), precisions=BF16, auto_precision="bf16"))
    share = 2 * (512 * 4096 + 4096 * 4096 + 4096 * 10) / 664223744  # the classifier of VGG-16
    assert model.cut(jobs[0]) == ("classifier.0", pytest.approx(share))
    # 4 views x 45,000 training images at the bf16 (auto) eval speed, val + test at fp32's
    assert model.cache_s(jobs[0]) == pytest.approx((1 - share) * (4 * 45000 / 40000 + 15000 / 10000))
    assert model.cache_s(jobs[0]) == pytest.approx(5.6583, abs=1e-4)


def test_adtn_costs_its_polish_its_generation_and_its_staged_refits(tiny_suite):
    suite = tiny_suite(ratios=[8], methods=[{"method": "adtn", "options": {"prefit_steps": 10, "prefit_polish": 4}}])
    job = expand(load_suite(str(suite)))[0]
    fit = {"a": 1e-6, "b": 1.0, "per_step": True, "start": {"a": 1e-5, "b": 1.0}}
    model = CostModel(calibration(factorize={"adtn": fit}))
    # the method says its work (Compressor.step_work): the cost model holds no ADTN knowledge
    net, adtn = meta_network(job.network, job.dataset), get_method("adtn", **job.options)
    work = {n: adtn.step_work(get_layer(net, n), 1) for n in job.layers}
    assert {n: w.size for n, w in work.items()} == {"conv2": 8192, "fc1": 8192}  # Q = 13 for 4,608 and 8,192
    assert {w.prefit_steps for w in work.values()} == {15.0}  # 10 Adam steps + 1.25 x 4 L-BFGS iterations
    prefit = 8192 * 1e-5 + 15 * 8192 * 1e-6            # start + 15 steps: 0.2048 s a layer
    assert model.factorize_s(job) == pytest.approx(2 * prefit) == pytest.approx(0.4096)
    # order backward: fc1 alone for 0.25 epoch (5 steps), then fc1 and conv2 (5 steps); conv2
    # is pre-fitted again before its stage
    train = 2 * (5 * 64 / 1000 + N_VAL / 10000)
    generation = 5 * 8192e-6 + 5 * 2 * 8192e-6
    assert model.finetune_s(job, False) == pytest.approx(train + generation + prefit)
    assert model.finetune_s(job, False) == pytest.approx(0.6688 + 0.12288 + 0.2048)
    flat = CostModel(calibration(factorize={"adtn": fit}))
    job_all = expand(load_suite(str(tiny_suite(ratios=[8], methods=[
        {"method": "adtn", "options": {"prefit_steps": 10, "prefit_polish": 4, "order": "all"}}]))))[0]
    assert flat.finetune_s(job_all, False) == pytest.approx(10 * 64 / 1000 + N_VAL / 10000 + 10 * 2 * 8192e-6)


def test_budget_admits_by_time_left_and_pays_each_baseline_once(tiny_suite, monkeypatch, tmp_path):
    now = [0.0]
    monkeypatch.setattr(bench.cost, "CLOCK", lambda: now[0])
    jobs = expand(load_suite(str(tiny_suite(ratios=[8]))))
    dense, svd = jobs
    model = CostModel(calibration(factorize={"svd": {"a": 0.0, "b": 1.0}}))
    base = model.baseline_s(dense)
    budget = Budget(base + model.job_s(dense, True) + 1e-9, model, jobs, baseline_root=tmp_path)
    assert budget.estimate(svd) == pytest.approx(base + model.job_s(svd, True))  # nobody paid yet
    assert budget(dense)                      # baseline + dense fit exactly
    assert budget.estimate(svd) == pytest.approx(model.job_s(svd, True))  # baseline now paid
    now[0] = budget.seconds - model.job_s(svd, True) / 2
    assert not budget(svd)                    # half of it is left
    now[0] = 0.0
    assert budget(svd)
    fresh = Budget(1.0, model, jobs, baseline_root=tmp_path)
    monkeypatch.setattr(bench.cost, "baseline_cached", lambda root, job: True)
    assert fresh.estimate(dense) == pytest.approx(model.job_s(dense, True))  # cached: free


def test_budget_admits_a_search_with_room_for_its_first_trial_and_asks_before_each(tiny_suite, monkeypatch,
                                                                                   tmp_path):
    now = [0.0]
    monkeypatch.setattr(bench.cost, "CLOCK", lambda: now[0])
    monkeypatch.setattr(bench.cost, "baseline_cached", lambda root, job: True)
    jobs = expand(load_suite(str(tiny_suite(ratios=[8], lr_grid=[0.01, 0.05]))))
    svd = jobs[1]
    model = CostModel(calibration(factorize={"svd": {"a": 0.0, "b": 1.0}}))
    whole = model.job_s(svd, True)
    first = whole - model.finetune_s(svd, True) + model.finetune_s(svd, True, trials=1)
    assert model.trials(svd, True) == 2 and model.finetune_s(svd, True) == pytest.approx(2 * model.trial_s(svd))
    budget = Budget((whole + first) / 2, model, jobs, baseline_root=tmp_path)
    assert budget.estimate(svd, by_trial=True) == pytest.approx(first)
    assert not budget(svd)  # the whole search does not fit
    assert budget(svd, by_trial=True)  # its first trial does: trials are kept, the search goes on later
    room = budget.room_for_trial(svd)
    assert room()
    now[0] = budget.seconds - model.trial_s(svd) / 2
    assert not room()
    assert budget.estimate(jobs[0], by_trial=True) == budget.estimate(jobs[0])  # dense searches nothing


def test_budget_pays_the_prefix_cache_once_even_with_the_baseline_cached(tiny_suite, monkeypatch, tmp_path):
    monkeypatch.setattr(bench.cost, "CLOCK", lambda: 0.0)
    monkeypatch.setattr(bench.cost, "baseline_cached", lambda root, job: True)
    model = CostModel(calibration(networks=("fc2",), factorize={"svd": {"a": 0.0, "b": 1.0}}, step_floor_s=1e-3))
    dense, svd = fc2_jobs(tiny_suite, "after_frozen_prefix")
    cache = (1 - FC2_SHARE) * 7.0
    budget = Budget(1000.0, model, [dense, svd], baseline_root=tmp_path)
    assert budget.estimate(svd) == pytest.approx(cache + 843 * 1e-3 + FC2_SHARE * 3.2)
    assert budget(dense)  # no baseline to train (it is cached) and no cache: dense does not fine-tune
    assert budget.estimate(svd) == pytest.approx(cache + 843 * 1e-3 + FC2_SHARE * 3.2)
    assert budget(svd)  # builds the cache: a job after it does not pay it again
    assert budget.estimate(svd) == pytest.approx(843 * 1e-3 + FC2_SHARE * 3.2)


def test_record_stages_split_time_total_and_compare_with_estimates(tiny_suite, tmp_path):
    rec = {"time_prefix_cache_s": 2.0, "time_compress_s": 1.0, "time_finetune_s": 5.0, "time_total_s": 9.5}
    assert bench.cost.record_stages(rec, {"time_train_s": 30.0}) == {
        "baseline": 30.0, "cache": 2.0, "factorize": 1.0, "finetune": 5.0, "eval": 1.5}
    allocated = {**rec, "time_allocate_s": 1.25}  # min-max scoring factorisations: the factorize stage
    assert bench.cost.record_stages(allocated)["factorize"] == 2.25 and bench.cost.record_stages(allocated)["eval"] == 0.25
    model = CostModel(calibration(networks=("fc2",), factorize={"svd": {"a": 0.0, "b": 1.0}}, step_floor_s=1e-3))
    dense, svd = fc2_jobs(tiny_suite, "after_frozen_prefix")
    records = {dense.key: {**rec, "status": "ok"}, svd.key: {"status": "ok", "same_as": dense.key}}
    n, est, got = bench.cost.compare_records(model, [dense, svd], records, tmp_path)
    assert n == 1 and got == {"baseline": 0.0, "cache": 2.0, "factorize": 1.0, "finetune": 5.0, "eval": 1.5}
    assert est == pytest.approx({"baseline": 0.0, "cache": 0.0, "factorize": 0.0,  # dense: whole network, no cache
                                 "finetune": 0.0, "eval": 2.6})


def test_priority_orders_stages_and_keeps_tuning_seed_first():
    jobs = expand(load_suite("cifar10-headline", ["priority=[baselines, headline, budgets, seeds]"]))
    stages = [j.stage for j in jobs]
    n = len([j for j in jobs if j.seed == 0])
    dense = sum(j.method == "dense" and j.seed == 0 for j in jobs)  # one per fine-tuning epoch count
    # the baseline, then each method at the headline, at each epoch count
    h = dense + len({(j.label, j.finetune["epochs"]) for j in jobs if j.method != "dense"})
    assert set(stages[:dense]) == {"baselines"} and {(j.method, j.seed) for j in jobs[:dense]} == {("dense", 0)}
    assert set(stages[dense:h]) == {"headline"} and all(j.target_ratio == 2191.57 for j in jobs[dense:h])
    assert set(stages[h:n]) == {"budgets"} and {j.seed for j in jobs[:n]} == {0}
    short = sum(j.seed > 0 and not j.reference and j.finetune["epochs"] == 5 for j in jobs)  # convergence evidence
    assert stages[n:] == ["seeds"] * (len(jobs) - n - short) + ["convergence"] * short
    for stage in ("seeds", "convergence"):
        assert [j.seed for j in jobs if j.stage == stage] == sorted(j.seed for j in jobs if j.stage == stage)
    assert jobs[n].method == "dense" and jobs[n + dense].target_ratio == 2191.57
    first_tuner = {j.key for j in jobs[:n]}
    assert tuner_keys(jobs) <= first_tuner | {j.key for j in jobs if j.method == "dense"}
    plain = expand(load_suite("cifar10-headline", ["priority=null"]))
    assert [j.key for j in plain] != [j.key for j in jobs] and {j.key for j in plain} == {j.key for j in jobs}


def test_headline_seeds_come_before_the_other_budgets():
    """cifar10-headline's priority: seed 0's headline, then seeds 1 and 2 there (their baselines
    first), then every other budget of seed 0, then the further seeds' other budgets, then the
    further seeds' 5-epoch runs (the tables report 10)."""
    jobs = expand(load_suite("cifar10-headline"))
    head = [j for j in jobs if j.stage in ("baselines", "headline", "headline-seeds")]
    assert jobs[:len(head)] == head  # the headline of every seed before anything else
    assert {(j.seed, j.stage) for j in head} == {(0, "baselines"), (0, "headline"), (1, "headline-seeds"),
                                                  (2, "headline-seeds")}
    seeds = [(j.seed, j.method == "dense") for j in head if j.stage == "headline-seeds"]
    assert seeds == sorted(seeds, key=lambda s: (s[0], not s[1]))  # seed by seed, its baseline first
    assert all(j.target_ratio in (1.0, 2191.57) for j in head)
    rest = jobs[len(head):]
    assert [j.stage for j in rest] == sorted((j.stage for j in rest), key=["budgets", "seeds", "convergence"].index)
    assert {j.seed for j in rest if j.stage == "budgets"} == {0}
    assert {j.target_ratio for j in rest if j.stage == "seeds"} == {1024.0, 32.0}
    assert {j.key for j in jobs} == {j.key for j in expand(load_suite("cifar10-headline", ["priority=null"]))}
    # the further seeds run every budget at the reported count (10 epochs) before any 5-epoch run
    ten = {j.finetune["epochs"] for j in jobs if j.stage in ("headline-seeds", "seeds") and not j.reference}
    assert ten == {10} and {j.finetune["epochs"] for j in rest if j.stage == "convergence"} == {5}
    assert {(j.seed, j.target_ratio) for j in rest if j.stage == "convergence"} == {
        (s, r) for s in (1, 2) for r in (2191.57, 1024.0, 32.0)}
    first = [j.finetune["epochs"] for j in jobs if j.stage == "headline"]
    assert first == sorted(first)  # the first seed tunes at 5 before its 10-epoch runs borrow the pick


def test_tuning_passes_keep_the_priority_stages():
    """The runner's passes (tuning jobs, then the jobs reusing their picks) are made stage by
    stage: seed 0's 10-epoch headline runs and the further seeds' headline come before the
    1024x and 32x tuning jobs (it was one pass of every tuning job first, whatever its stage)."""
    jobs = expand(load_suite("cifar10-headline"))
    tuners = tuner_keys(jobs)
    passes = tuning_passes(jobs, tuners, ordered=True)
    flat = [j for p in passes for j in p]
    assert sorted(j.key for j in flat) == sorted(j.key for j in jobs)
    order = ["baselines", "headline", "headline-seeds", "budgets", "seeds", "convergence"]
    assert [j.stage for j in flat] == sorted((j.stage for j in flat), key=order.index)
    for p in passes:  # a pass is one stage, and a reusing job never comes before its tuning job
        assert len({j.stage for j in p}) == 1
    position = {j.key: i for i, j in enumerate(flat)}
    pass_of = {j.key: n for n, p in enumerate(passes) for j in p}
    for j in flat:
        tuner = tuner_key(j)
        if picks_lr(j) and tuner in position and tuner != j.key:  # its pick is recorded before its pass starts
            assert pass_of[tuner] < pass_of[j.key]
    ten = [j for j in flat if j.stage == "headline" and j.finetune["epochs"] == 10]
    assert ten and max(position[j.key] for j in ten) < min(position[j.key] for j in flat if j.stage == "budgets")


@pytest.mark.parametrize("override, message", [
    ("priority=[baselines, fastest]", "priority: unknown stage 'fastest'; valid: baselines, headline, headline-seeds, budgets, seeds, convergence"),
    ("priority=[seeds, seeds]", "priority: 'seeds' is listed twice"),
    ("priority=baselines", "priority 'baselines': expected a list of stages"),
    ("headline_ratio=7", "headline_ratio 7 is not one of ratios"),
    ("headline_ratio=-1", "headline_ratio -1: expected a finite number > 0"),
    ("budget_tolerance=0.5", "budget_tolerance 0.5: expected a finite number >= 1"),
    ("factorize_time_cap_s=[1]", "factorize_time_cap_s [1]: expected a finite number of seconds > 0"),
])
def test_bad_priority_keys_are_one_line_errors(override, message):
    with pytest.raises(SuiteError) as e:
        load_suite("cifar10-headline", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_priority_headline_seeds_needs_headline_ratio():
    with pytest.raises(SuiteError, match="priority lists 'headline-seeds' but the suite has no headline_ratio"):
        load_suite("cifar10-headline", ["priority=[baselines, headline-seeds]", "headline_ratio=null"])


def test_priority_headline_needs_headline_ratio(capsys):
    assert main(["--suite", "cifar10-headline", "--set", "headline_ratio=null", "--dry-run"]) == 2
    assert "priority lists 'headline' but the suite has no headline_ratio" in capsys.readouterr().err


def test_planned_skips_unreachable_budget_and_capped_factorisation():
    jobs = {(j.method, j.target_ratio): j
            for j in expand(load_suite("cifar10-headline", ["protocol.seeds=[0]", "factorize_time_cap_s=120"]))}
    svd = planned_skip(jobs[("svd", 2191.57)])
    assert svd["status"] == "skipped" and "the smallest svd has 20,992 parameters, 2.44x the budget of 8,616" in svd["error"]
    assert planned_skip(jobs[("svd", 1024.0)]) is None  # 20,992 vs 18,440: within 1.25x
    assert planned_skip(jobs[("tt", 2191.57)]) is None and planned_skip(jobs[("prune", 2191.57)]) is None
    model = CostModel(calibration(networks=("vgg16",), factorize={"cp": {"a": 1e-5, "b": 1.0}}))
    cp = planned_skip(jobs[("cp", 32.0)], model)  # 1e-5 s x 18,874,368 weights = 189 s > 120
    assert cp["time_cap_s"] == 120 and cp["estimate_factorize_s"] == pytest.approx(188.74368)
    assert "estimated factorisation time 189 s exceeds factorize_time_cap_s 120" in cp["error"]
    assert planned_skip(jobs[("tt", 32.0)], model) is None  # no calibration entry: not capped
    assert "largest" not in cp["error"]  # cp's ranks reach 32x


def test_time_capped_skip_says_when_the_budget_was_out_of_reach_anyway():
    """ADTN's max_depth 8 on VGG-16's hidden linears: 8,616 + 7 x (320 + 368) = 13,432
    parameters, under 1024x's 18,440; at the paper's budget depth 1 is the budget."""
    jobs = {(j.label, j.target_ratio): j
            for j in expand(load_suite("cifar10-headline", ["protocol.seeds=[0]", "factorize_time_cap_s=120"]))}
    model = CostModel(calibration(networks=("vgg16",), factorize={"adtn": {"a": 1e-5, "b": 1.0}}))
    at_1024 = planned_skip(jobs[("adtn", 1024.0)], model)["error"]
    assert at_1024.endswith("; and its largest size, 13,432 parameters, is 0.73x the budget of 18,440")
    assert "largest" not in planned_skip(jobs[("adtn", 2191.57)], model)["error"]


def test_factorize_estimate_scales_with_the_budget_where_the_method_says_so():
    """A law measured at 32x: CP's ALS work is linear in the rank (factorize_cost_exponent 1),
    so at 2,191.57x it is 32 / 2,191.57 of it; tt's TT-SVD does not depend on the rank (0)."""
    jobs = {(j.method, j.target_ratio): j for j in expand(load_suite("cifar10-headline", ["protocol.seeds=[0]"]))}
    law = {"a": 1e-5, "b": 1.0, "budget": "x32"}
    model = CostModel(calibration(networks=("vgg16",), factorize={"cp": law, "tt": law}))
    full = 1e-5 * 18_874_368
    assert model.factorize_s(jobs[("cp", 32.0)]) == pytest.approx(full)
    assert model.factorize_s(jobs[("cp", 2191.57)]) == pytest.approx(full * 32 / 2191.57)
    assert model.factorize_s(jobs[("tt", 2191.57)]) == pytest.approx(full)
    old = CostModel(calibration(networks=("vgg16",), factorize={"cp": {"a": 1e-5, "b": 1.0}}))
    assert old.factorize_s(jobs[("cp", 2191.57)]) == pytest.approx(full)  # a law without its budget


def test_time_capped_job_is_recorded_skipped_and_reconsidered_with_a_new_cap(tmp_path, tiny_suite, capsys):
    suite = tiny_suite(ratios=[8], factorize_time_cap_s=5)
    cal = write_cal(tmp_path / "cal.json", factorize={"svd": {"a": 1e-3, "b": 1.0}})  # 16.8 s
    args = ["--suite", str(suite), "--out", str(tmp_path), "--calibration", str(cal), "--no-progress"]
    assert main(args) == 0
    rec = {r["method"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert rec["svd"]["status"] == "skipped" and "exceeds factorize_time_cap_s 5" in rec["svd"]["error"]
    assert main(args) == 0 and "2 already done" in capsys.readouterr().out  # same cap: still done
    assert main(args + ["--set", "factorize_time_cap_s=60"]) == 0
    recs = read_records(tmp_path / suite.stem / "runs.jsonl")
    assert [r["status"] for r in recs if r["method"] == "svd"] == ["skipped", "ok"]


def test_calibrate_writes_a_small_json(tmp_path, capsys):
    from bench.perf.calibrate import main as calibrate

    out = tmp_path / "cal.json"
    assert calibrate(["--device", "cpu", "--networks", "digitnet", "--methods", "svd,adtn", "--sizes", "16,32",
                      "--precisions", "bf16", "--out", str(out)]) == 0
    cal = bench.cost.load_calibration(out)
    net = cal["networks"]["digitnet"]
    assert cal["device"] == "cpu" and net["train_img_s"] > 0
    assert set(net["precisions"]) == {"fp32", "bf16"}  # the default precision is always timed
    assert net["train_img_s"] == net["precisions"]["fp32"]["train_img_s"] and net["precisions"]["bf16"]["eval_img_s"] > 0
    assert cal["default_precision"] == "fp32" and cal["auto_precision"] in ("bf16", "fp32") and cal["step_floor_s"] > 0
    assert set(cal["factorize"]) == {"svd", "adtn"} and cal["factorize"]["adtn"]["per_step"]
    assert [p[0] for p in cal["factorize"]["svd"]["points"]] == [256, 1024]
    assert "wrote" in capsys.readouterr().out


def test_dry_run_estimates_with_a_calibration_and_says_when_there_is_none(tmp_path, tiny_suite, capsys,
                                                                          monkeypatch):
    suite = str(tiny_suite(ratios=[8]))
    assert main(["--suite", suite, "--dry-run", "--calibration", str(write_cal(tmp_path / "c.json"))]) == 0
    out = capsys.readouterr().out
    assert "est " in out and "(baselines)" in out and "total:" in out and "by stage: baseline" in out
    assert "by priority stage" not in out  # no priority: one order
    header = next(x for x in out.splitlines() if x.startswith("estimated time on"))
    cal_threads = json.loads((tmp_path / "c.json").read_text())["threads"]
    assert f"calibrated with {cal_threads} threads" in header
    assert ("this run" in header) == (torch.get_num_threads() != cal_threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: cal_threads + 1)  # the run's threads, not the calibration's
    assert main(["--suite", suite, "--dry-run", "--calibration", str(tmp_path / "c.json")]) == 0
    assert f"this run {cal_threads + 1}," in capsys.readouterr().out
    stages = {"baselines": 0.0, "budgets": 0.0, "seeds": 0.0, "convergence": 0.0}
    assert main(["--suite", str(tiny_suite(ratios=[8], seeds=[0, 1], finetune_epochs=[0.5, 1],
                                           priority=list(stages))),
                 "--dry-run", "--calibration", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "by priority stage, in run order:" in x)
    for part in line.split(": ", 1)[1].split(", "):
        name, seconds, _ = part.split()
        stages[name] += float(seconds.replace(",", ""))
    assert list(stages) == [p.split()[0] for p in line.split(": ", 1)[1].split(", ")]  # in run order
    total = float(next(x for x in out.splitlines() if "total:" in x).split()[1].replace(",", ""))
    assert stages["baselines"] > 0 and stages["convergence"] > 0 and sum(stages.values()) == pytest.approx(total, abs=4)
    assert main(["--suite", suite, "--dry-run", "--device", "cuda", "--calibration", str(tmp_path / "no.json")]) == 2
    assert "--calibration" in capsys.readouterr().err
    monkeypatch.setattr(bench.cost, "CALIBRATION_DIR", tmp_path / "none")
    assert main(["--suite", suite, "--dry-run", "--device", "cuda"]) == 0  # no CUDA needed to estimate
    out = capsys.readouterr().out
    assert "no time estimates: no calibration for cuda" in out and "est " not in out


def test_time_budget_needs_a_calibration_and_a_positive_budget(tmp_path, tiny_suite, capsys, monkeypatch):
    suite = str(tiny_suite())
    monkeypatch.setattr(bench.cost, "CALIBRATION_DIR", tmp_path / "none")
    assert main(["--suite", suite, "--out", str(tmp_path), "--time-budget", "5"]) == 2
    err = capsys.readouterr().err
    assert "--time-budget needs a calibration for cpu" in err and len(err.strip().splitlines()) == 1
    assert main(["--suite", suite, "--out", str(tmp_path), "--time-budget", "0"]) == 2
    assert "--time-budget 0: expected a number of minutes > 0" in capsys.readouterr().err
    cal = write_cal(tmp_path / "c.json", networks=("fc2",))
    assert main(["--suite", suite, "--out", str(tmp_path), "--time-budget", "5", "--calibration", str(cal)]) == 2
    assert "has no network digitnet" in capsys.readouterr().err
    assert not (tmp_path / "tiny0").exists()


def test_datasets_carry_their_sizes():
    """The cost model sizes epochs from the dataset's registration; CIFAR's agree with the
    official files' row counts its loader checks."""
    from bench.cost import dataset_sizes
    from bench.data import cifar

    assert dataset_sizes("mnist") == dataset_sizes("fashion-mnist") == (60000, 10000)
    assert dataset_sizes("digits") == (1438, 359)
    for name, spec in cifar.SPECS.items():
        assert dataset_sizes(name) == (sum(spec.rows[f] for f, _ in spec.train), sum(spec.rows[f] for f, _ in spec.test))


def test_an_epoch_sweep_costs_an_epoch_blind_method_once(tiny_suite):
    """NN-BCD's training ignores the epoch count and dense is never fine-tuned: the sweep copies
    their jobs at the other counts (bench.runner.adopt_equal), so the estimate pays for one."""
    nnbcd = {"method": "nnbcd-tt", "options": {"subset": 200}}
    suite = load_suite(str(tiny_suite(networks={"digitnet": ["fc1"]}, methods=["dense", nnbcd, "svd"], ratios=[2],
                                      finetune_epochs=[0.5, 1])))
    jobs = expand(suite)
    model = CostModel(calibration(factorize={"svd": {"a": 1e-3, "b": 1.0}, "nnbcd-tt": {"a": 1e-3, "b": 1.0}}))
    stages = model.suite_stages(jobs)
    by = {(j.method, j.finetune["epochs"]): sum(v for s, v in stages[j.key].items() if s != "baseline") for j in jobs}
    assert by[("nnbcd-tt", 0.5)] > 0 and by[("nnbcd-tt", 1)] == 0
    assert by[("dense", 0.5)] > 0 and by[("dense", 1)] == 0
    assert by[("svd", 1)] > by[("svd", 0.5)] > 0  # svd trains twice as long at 1 epoch
    two = {j.key: j for j in jobs}
    assert len({j.measurement_key for j in two.values()}) == 4 and len(two) == 6


def test_nnbcd_with_a_fixed_sweep_count_costs_its_sweeps(tiny_suite):
    """NN-BCD says how long its options make it (``Compressor.finetune_cost_scale``): with the
    plateau rule off it runs every one of ``max_sweeps`` (cifar10-nnbcd: 60 sweeps were costed
    as a default job's ~15 and ran four times the estimate); the defaults cost as before."""
    entries = [{"method": "nnbcd-tt", "options": {"subset": 200}},
               {"method": "nnbcd-tt", "label": "fixed-60", "options": {"subset": 200, "patience": 0, "max_sweeps": 60}},
               {"method": "nnbcd-tt", "label": "plateau-5", "options": {"subset": 200, "max_sweeps": 5}}]
    suite = load_suite(str(tiny_suite(networks={"digitnet": ["fc1"]}, methods=entries, ratios=[2])))
    model = CostModel(calibration(factorize={"nnbcd-tt": {"a": 1e-3, "b": 1.0}}))
    ft = {j.label: model.finetune_s(j, tuning=True) for j in expand(suite)}
    assert get_method("nnbcd-tt").finetune_cost_scale() == 1.0
    assert ft["fixed-60"] == pytest.approx(4 * ft["nnbcd-tt"])
    assert ft["plateau-5"] == pytest.approx(ft["nnbcd-tt"] / 3)


def test_dry_run_compares_its_estimates_with_current_records_only(tmp_path, tiny_suite, capsys):
    """A record on another baseline than the cached checkpoint runs again (bench.stale): its
    measured time is not what the sweep will spend, so the estimate-vs-measured line leaves it out."""
    suite = tiny_suite(ratios=[8])
    assert main(["--suite", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    cal = str(write_cal(tmp_path / "c.json"))
    dry = ["--suite", str(suite), "--out", str(tmp_path), "--dry-run", "--calibration", cal]
    capsys.readouterr()
    assert main(dry) == 0 and " 2 recorded jobs (" in capsys.readouterr().out
    path = tmp_path / suite.stem / "runs.jsonl"
    recs = read_records(path)
    recs[-1]["baseline_fingerprint"] = "0" * 16  # made on another baseline
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(dry) == 0 and " 1 recorded jobs (" in capsys.readouterr().out


def test_dry_run_of_a_resumed_sweep_costs_only_what_is_left(tmp_path, tiny_suite, capsys):
    """Jobs with current records, and jobs the sweep would copy from a reused suite's equal
    records, are marked and cost nothing: the total is what the command would take now."""
    first = tiny_suite(methods=["dense", "svd"], ratios=[8], seeds=[0])
    assert main(["--suite", str(first), "--out", str(tmp_path), "--no-progress"]) == 0
    cal = str(write_cal(tmp_path / "c.json"))
    grown = tiny_suite(methods=["dense", "svd"], ratios=[8, 100], seeds=[0], reuse=[first.stem])
    jobs = {(j.method, j.target_ratio): j for j in expand(load_suite(str(grown)))}
    capsys.readouterr()
    assert main(["--suite", str(grown), "--out", str(tmp_path), "--dry-run", "--calibration", cal]) == 0
    out = capsys.readouterr().out
    line = {k: next(x for x in out.splitlines() if x.startswith(j.key)) for k, j in jobs.items()}
    assert f"copied: reused_from {first.stem}" in line[("svd", 8)] and "est       0.0 s" in line[("svd", 8)]
    assert "copied" not in line[("svd", 100)] and "est       0.0 s" not in line[("svd", 100)]
    assert "3 jobs, 2 of them recorded already or copied from equal records" in out
    assert main(["--suite", str(grown), "--out", str(tmp_path), "--no-progress"]) == 0  # the sweep agrees
    capsys.readouterr()
    assert main(["--suite", str(grown), "--out", str(tmp_path), "--dry-run", "--calibration", cal]) == 0
    out = capsys.readouterr().out
    assert "3 jobs, 3 of them recorded already" in out and "recorded: " in line_of(out, jobs[("svd", 100)].key)
    assert "total: 0 s" in out


def line_of(out: str, key: str) -> str:
    return next(x for x in out.splitlines() if x.startswith(key))
