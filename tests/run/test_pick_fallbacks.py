"""A seed that borrows seed 0's pick and collapses to chance tries seed 0's next-best picks
(``protocol.pick_fallbacks``), judged on validation only; keys, records and suite checks."""
from __future__ import annotations

import pytest

from bench.cli import main
from bench.jobs import expand
from bench.plan import tuner_key
from bench.records import key_matches, read_records
from bench.suite import load_suite
from bench.suite_schema import SuiteError
from bench.tuning import borrowed, ranked_picks, replay_borrowed, tuned

TUNING = {"grid": [0.01, 0.03], "pick": {"optimizer": "adam", "lr": 0.01}, "tuned_here": True,
          "val_acc": {"sgd@0.01": 60.0, "sgd@0.03": 70.0, "adam@0.01": 80.0, "adam@0.03": 70.0, "adam@0.003": 75.0},
          "diverged": ["sgd@0.09"]}


def test_ranked_picks_are_the_pick_then_the_rest_by_validation_accuracy():
    assert ranked_picks(TUNING) == [{"optimizer": "adam", "lr": 0.01}, {"optimizer": "adam", "lr": 0.003},
                                    {"optimizer": "sgd", "lr": 0.03}, {"optimizer": "adam", "lr": 0.03},
                                    {"optimizer": "sgd", "lr": 0.01}]  # ties: the order tried; diverged: never
    assert ranked_picks({"pick": 0.03, "val_acc": {"0.01": 50.0, "0.03": 60.0, "0.1": 55.0}}) == [0.03, 0.1, 0.01]


class Net:
    """A stand-in model: ``finetune`` appends its pick to ``history``; accuracy depends on the pick."""

    def __init__(self):
        self.history: list = []


def _runner(acc_of):
    def finetune(model, pick):
        if acc_of(pick) is None:
            raise FloatingPointError("diverged")
        model.history.append(pick)
        return f"ctx-{pick}"
    return finetune, (lambda model: acc_of(model.history[-1]))


def test_a_collapsed_seed_falls_back_to_the_next_pick_from_the_same_start():
    finetune, val = _runner({0.03: 10.2, 0.01: 80.0, 0.1: 85.0}.get)
    start = Net()
    model, ctx, kept, tried = borrowed(finetune, val, start, [0.03, 0.01, 0.1], 2, lambda a, p: abs(a - 10) <= 1.5)
    assert kept == 0.01 and ctx == "ctx-0.01"  # the first pick not at chance, not the best of all three
    assert model.history == [0.01]  # fine-tuned from the start, not on top of the collapsed run
    assert tried == [{"pick": 0.03, "val_acc": 10.2}, {"pick": 0.01, "val_acc": 80.0}]


def test_divergence_falls_back_and_all_collapsed_keeps_the_best_on_validation():
    finetune, val = _runner({0.03: None, 0.01: 10.9, 0.1: 11.3}.get)
    model, _, kept, tried = borrowed(finetune, val, Net(), [0.03, 0.01, 0.1], 2, lambda a, p: abs(a - 10) <= 1.5)
    assert kept == 0.1 and [t["val_acc"] for t in tried] == [None, 10.9, 11.3]
    finetune, val = _runner({0.03: None, 0.01: None}.get)
    with pytest.raises(FloatingPointError, match="next-best"):
        borrowed(finetune, val, Net(), [0.03, 0.01], 1, lambda a, p: False)


@pytest.mark.parametrize("accs", [(10.2, 80.0, 85.0), (None, 10.9, 11.3), (50.0, 10.0, 90.0), (10.0, None, 10.5),
                                  (30.0, 60.0, 95.0)])
def test_replaying_the_fallback_rule_on_its_own_runs_gives_what_it_kept(accs):
    """``replay_borrowed`` (how a record made under one fallback rule is judged under another)
    is ``borrowed``'s rule: on the runs borrowed made, it makes as many and keeps the same pick;
    a stricter rule on the same runs wants more, or keeps another."""
    picks = [0.03, 0.01, 0.1]
    finetune, val = _runner(dict(zip(picks, accs)).get)
    for rule in (lambda a, p: abs(a - 10) <= 1.5, lambda a, p: a < 55):
        _, _, kept, tried = borrowed(finetune, val, Net(), picks, 2, rule)
        tried = tried or [{"pick": picks[0], "val_acc": accs[0]}]
        assert replay_borrowed(tried, 3, rule) == (len(tried), kept)
    chance_runs = borrowed(finetune, val, Net(), picks, 2, lambda a, p: abs(a - 10) <= 1.5)[3] or [
        {"pick": 0.03, "val_acc": accs[0]}]
    if accs == (30.0, 60.0, 95.0):  # 30 is no collapse, but below 55: the stricter rule goes on
        assert replay_borrowed(chance_runs, 3, lambda a, p: a < 55) is None


def test_without_fallbacks_the_borrowed_pick_runs_once_and_its_divergence_fails_the_job():
    finetune, val = _runner({0.03: 10.0, 0.01: 80.0}.get)
    model, _, rec = tuned(finetune, val, Net(), [0.01, 0.03], None, 0, [0.03, 0.01])
    assert model.history == [0.03] and rec == {"grid": [0.01, 0.03], "pick": 0.03, "tuned_here": False}
    finetune, val = _runner({0.01: 80.0}.get)
    with pytest.raises(FloatingPointError, match="diverged"):
        tuned(finetune, val, Net(), [0.01, 0.03], None, 0, 0.03)
    finetune, val = _runner({0.03: 10.0, 0.01: 80.0}.get)  # with fallbacks, the record says what ran
    _, _, rec = tuned(finetune, val, Net(), [0.01, 0.03], None, 0, [0.03, 0.01], fallbacks=1,
                      collapsed=lambda a, p: a < 11.5)
    assert rec["pick"] == 0.01 and rec["borrowed_pick"] == 0.03 and len(rec["fallbacks"]) == 2


def _suite_jobs(tiny_suite, **proto):
    path = tiny_suite(methods=["dense", "svd", "nnbcd-tt"], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05], **proto)
    return {(j.method, j.seed): j for j in expand(load_suite(str(path)))}


def test_pick_fallbacks_keys_the_borrowing_seeds_only(tiny_suite):
    plain, fb = _suite_jobs(tiny_suite), _suite_jobs(tiny_suite, pick_fallbacks=2)
    assert fb["svd", 0].key == plain["svd", 0].key  # the tuning job has nothing to fall back on
    assert fb["svd", 1].key != plain["svd", 1].key and fb["svd", 1].config()["pick_fallbacks"] == 2
    assert fb["svd", 1].tune_key == fb["svd", 0].tune_key and tuner_key(fb["svd", 1]) == fb["svd", 0].key
    for method in ("dense", "nnbcd-tt"):  # no lr to pick: their records stay valid on every seed
        assert fb[method, 1].key == plain[method, 1].key


@pytest.mark.parametrize("value, message", [(True, "integer in 0..5"), (6, "integer in 0..5"), ("2", "integer")])
def test_pick_fallbacks_must_be_a_small_integer(tiny_suite, value, message):
    with pytest.raises(SuiteError, match=f"pick_fallbacks.*{message}"):
        load_suite(str(tiny_suite(lr_grid=[0.01], pick_fallbacks=value)))


def test_pick_fallbacks_needs_an_lr_grid(tiny_suite):
    with pytest.raises(SuiteError, match="pick_fallbacks 1: needs an lr_grid"):
        load_suite(str(tiny_suite(pick_fallbacks=1)))


COLLAPSE_SEED1_ONCE = """
def finetune(self, model, ctx):  # seed 1's first fine-tuning ends predicting one class
    super().finetune(model, ctx)
    if torch.initial_seed() == 1 and not COLLAPSED:
        COLLAPSED.append(True)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
"""


def _run(plugin, suite, out, *more) -> int:
    return main(["--plugin", str(plugin), "--suite", str(suite), "--out", str(out), "--no-progress", *more])


def test_a_seed_that_collapses_with_seed_0s_pick_runs_again_with_the_runner_up(tmp_path, tiny_suite, svd_plugin):
    plugin = svd_plugin("collapse-once-svd", COLLAPSE_SEED1_ONCE, imports="import torch\nCOLLAPSED = []")
    suite = tiny_suite(methods=["collapse-once-svd"], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05],
                       pick_fallbacks=2)
    assert _run(plugin, suite, tmp_path) == 0
    recs = {r["seed"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    seed0, seed1 = recs[0]["lr_tuning"], recs[1]["lr_tuning"]
    assert seed0["tuned_here"] and "fallbacks" not in seed0
    runner_up = ranked_picks(seed0)[1]
    assert seed1["borrowed_pick"] == seed0["pick"] and seed1["pick"] == runner_up
    assert [t["pick"] for t in seed1["fallbacks"]] == [seed0["pick"], runner_up]
    assert abs(seed1["fallbacks"][0]["val_acc"] - 10) <= 1.5 < abs(seed1["fallbacks"][1]["val_acc"] - 10)
    assert recs[1]["acc_val_after_finetune"] == seed1["fallbacks"][1]["val_acc"]  # the kept run is the one recorded
    assert recs[1]["pick_fallbacks"] == 2 and "pick_fallbacks" not in recs[0]
    assert all(key_matches(r) for r in recs.values())


def test_adding_fallbacks_reruns_only_the_seeds_that_needed_one(tmp_path, tiny_suite, svd_plugin, capsys):
    """Records made without ``pick_fallbacks`` whose run was not at chance are what the rule would
    have kept: taken as they are (``same_as``). A collapsed seed runs again, with its fallbacks."""
    plugin = svd_plugin("collapse-once-svd-2", COLLAPSE_SEED1_ONCE, imports="import torch\nCOLLAPSED = []")
    grid = dict(ratios=[2, 4], seeds=[0, 1], lr_grid=[0.01, 0.05])
    plain = tiny_suite(methods=["collapse-once-svd-2"], **grid)
    assert _run(plugin, plain, tmp_path) == 0  # seed 1 collapses at the first budget it runs
    before = read_records(tmp_path / plain.stem / "runs.jsonl")
    collapsed = [r for r in before if abs(r["acc_val_after_finetune"] - 10) <= 1.5]
    assert [r["seed"] for r in collapsed] == [1]
    (tmp_path / "fb").mkdir()
    fb_suite = tmp_path / "fb" / plain.name  # the same suite name, with pick_fallbacks: 2
    fb_suite.write_text(plain.read_text().replace("lr_grid:", "pick_fallbacks: 2\n  lr_grid:"))
    assert "pick_fallbacks: 2" in fb_suite.read_text()
    capsys.readouterr()
    assert _run(plugin, fb_suite, tmp_path) == 0
    assert "took 1 records of equal jobs" in capsys.readouterr().err  # the other seed-1 budget
    after = [r for r in read_records(tmp_path / plain.stem / "runs.jsonl")][len(before):]
    copied = [r for r in after if r.get("same_as")]
    ran = [r for r in after if not r.get("same_as")]
    assert len(copied) == 1 and copied[0]["seed"] == 1 and copied[0]["pick_fallbacks"] == 2
    assert copied[0]["same_as"] != collapsed[0]["key"] and key_matches(copied[0])
    assert len(ran) == 1 and ran[0]["budget"] == collapsed[0]["budget"] and ran[0]["seed"] == 1
    assert "fallbacks" not in ran[0]["lr_tuning"]  # the plugin collapses once per process: no need this time


# --- fallback_when: half_gain (a partial collapse falls back too) --------------------------------
def test_needs_fallback_at_chance_always_and_below_half_the_gain_under_half_gain():
    from bench.chance import needs_fallback

    for rule in ("chance", "half_gain"):
        assert needs_fallback(None, 10.0, 88.0, rule) and needs_fallback(float("nan"), 10.0, 88.0, rule)
        assert needs_fallback(11.3, 10.0, 88.0, rule) and not needs_fallback(85.0, 10.0, 88.0, rule)
    assert not needs_fallback(40.0, 10.0, 88.0, "chance") and needs_fallback(40.0, 10.0, 88.0, "half_gain")
    assert not needs_fallback(49.0, 10.0, 88.0, "half_gain")  # half of 78 points over chance kept
    assert not needs_fallback(40.0, 10.0, None, "half_gain")  # no reference: the chance test only
    with pytest.raises(ValueError, match="valid: chance, half_gain"):
        needs_fallback(40.0, 10.0, 88.0, "median")


def test_half_gain_falls_back_from_a_run_far_below_the_tuning_seeds():
    """LeNet-5 / Fashion-MNIST under v3: a seed kept 12.8 % with seed 0's pick (68.2 % on seed 0)
    because 12.8 is not at chance; half_gain tries the runner-up, whose reference is its own."""
    import pickle

    from bench.chance import needs_fallback
    from bench.tuning import RankedPicks

    ranked = ranked_picks({"pick": 0.03, "val_acc": {"0.01": 60.0, "0.03": 68.2, "0.1": 20.0}})
    assert isinstance(ranked, RankedPicks) and ranked.val_of(0.01) == 60.0 and ranked.val_of(0.3) is None
    assert pickle.loads(pickle.dumps(ranked)).val == ranked.val  # picks travel to worker processes
    finetune, val = _runner({0.03: 12.8, 0.01: 58.0, 0.1: 19.0}.get)
    for rule, kept_pick in (("chance", 0.03), ("half_gain", 0.01)):
        _, _, kept, tried = borrowed(finetune, val, Net(), ranked, 2,
                                     lambda a, p, rule=rule: needs_fallback(a, 10.0, ranked.val_of(p), rule))
        assert kept == kept_pick
    assert [t["pick"] for t in tried] == [0.03, 0.01]


def test_fallback_when_keys_the_borrowing_seeds_only_and_chance_is_the_default(tiny_suite):
    plain, chance = _suite_jobs(tiny_suite, pick_fallbacks=2), _suite_jobs(tiny_suite, pick_fallbacks=2,
                                                                             fallback_when="chance")
    half = _suite_jobs(tiny_suite, pick_fallbacks=2, fallback_when="half_gain")
    assert {k: j.key for k, j in chance.items()} == {k: j.key for k, j in plain.items()}
    assert half["svd", 0].key == plain["svd", 0].key and half["svd", 1].key != plain["svd", 1].key
    assert half["svd", 1].config()["fallback_when"] == "half_gain" and half["svd", 1].tune_key == half["svd", 0].tune_key
    assert half["dense", 1].key == plain["dense", 1].key


@pytest.mark.parametrize("proto, message", [({"pick_fallbacks": 1, "fallback_when": "median"}, "valid: chance, half_gain"),
                                            ({"fallback_when": "half_gain"}, "needs pick_fallbacks")])
def test_fallback_when_is_checked(tiny_suite, proto, message):
    with pytest.raises(SuiteError, match=f"fallback_when.*{message}"):
        load_suite(str(tiny_suite(lr_grid=[0.01], **proto)))


def _earlier(job, val, kept, tried=None):
    """A record of ``job`` made earlier: kept ``kept`` at validation ``val`` after ``tried``."""
    tuning = {"pick": kept, "tuned_here": False, **({"fallbacks": tried} if tried else {})}
    return {"key": job.key, "status": "ok", "dataset": job.dataset, "acc_val_after_finetune": val, "lr_tuning": tuning}


def test_a_record_of_the_chance_rule_is_adopted_only_where_half_gain_keeps_the_same_run(tiny_suite):
    from dataclasses import replace

    from bench.runner import _under_earlier_rule

    job = _suite_jobs(tiny_suite, pick_fallbacks=2, fallback_when="half_gain")["svd", 1]
    older, plain = replace(job, fallback_when=None), replace(job, pick_fallbacks=None, fallback_when=None)
    ranked = ranked_picks({"pick": 0.05, "val_acc": {"0.01": 80.0, "0.05": 88.0}})

    def adopted(rec):
        return _under_earlier_rule(job, {rec["key"]: (rec, None)}, ranked) is not None

    assert adopted(_earlier(plain, 85.0, 0.05)) and adopted(_earlier(older, 85.0, 0.05))
    assert not adopted(_earlier(plain, 40.0, 0.05)) and not adopted(_earlier(older, 40.0, 0.05))
    after_chance = [{"pick": 0.05, "val_acc": 10.1}, {"pick": 0.01, "val_acc": 70.0}]  # 70 > (10 + 80) / 2
    assert adopted(_earlier(older, 70.0, 0.01, after_chance))
    after_chance[1]["val_acc"] = 30.0  # half_gain would go on... but both picks are tried: the best is kept
    assert adopted(_earlier(older, 30.0, 0.01, after_chance))
    assert not adopted(_earlier(older, 10.1, 0.05, after_chance))  # not the best on validation
    assert _under_earlier_rule(job, {plain.key: (_earlier(plain, 85.0, 0.05), None)}, None) is None  # no reference


HALF_SEED1_ONCE = """
def finetune(self, model, ctx):  # seed 1's first fine-tuning ends never predicting classes 0-6
    super().finetune(model, ctx)
    if torch.initial_seed() == 1 and not DONE:
        DONE.append(True)
        with torch.no_grad():
            model.fc2.bias[:7] = -1e4
"""


def test_a_seed_far_below_seed_0_but_above_chance_falls_back_under_half_gain_only(tmp_path, tiny_suite, svd_plugin):
    for rule in ("chance", "half_gain"):
        name = f"half-once-svd-{rule}".replace("_", "-")
        plugin = svd_plugin(name, HALF_SEED1_ONCE, imports="import torch\nDONE = []")
        suite = tiny_suite(methods=[name], ratios=[2], seeds=[0, 1], lr_grid=[0.01, 0.05], pick_fallbacks=2,
                           fallback_when=rule, finetune={"epochs": 2, "batch_size": 64, "lr": 0.01})
        assert _run(plugin, suite, tmp_path / rule) == 0
        recs = {r["seed"]: r for r in read_records(tmp_path / rule / suite.stem / "runs.jsonl")}
        seed0 = ranked_picks(recs[0]["lr_tuning"])
        first = recs[1]["lr_tuning"].get("fallbacks", [{"val_acc": recs[1]["acc_val_after_finetune"]}])[0]["val_acc"]
        assert 11.5 < first < 10 + (seed0.val_of(seed0[0]) - 10) / 2  # not at chance, below half the gain
        assert ("fallbacks" in recs[1]["lr_tuning"]) == (rule == "half_gain")
    assert recs[1]["lr_tuning"]["pick"] == seed0[1] and recs[1]["fallback_when"] == "half_gain"


def test_a_seed_whose_tuning_seed_was_skipped_is_skipped_too_not_failed(tmp_path, tiny_suite, capsys):
    """prune at 4096x cannot keep even its dense biases: seed 0 is skipped before it tunes, and
    seed 1, which would reuse seed 0's pick, is skipped for the same reason (it used to fail with
    "the lr pick of its tuning seed is missing")."""
    suite = tiny_suite(methods=["prune"], ratios=[4096], seeds=[0, 1], lr_grid=[0.01, 0.05], pick_fallbacks=2)
    assert _run_plain(suite, tmp_path) == 0
    recs = {r["seed"]: r for r in read_records(tmp_path / suite.stem / "runs.jsonl")}
    assert [recs[s]["status"] for s in (0, 1)] == ["skipped", "skipped"]
    assert "budget unreachable" in recs[1]["error"] and recs[1]["error"] == recs[0]["error"]


def test_a_reusing_seed_that_reaches_fine_tuning_without_a_pick_fails_with_the_reason():
    from bench.tuning import MissingPick, RankedPicks

    finetune, val = _runner({0.01: 80.0}.get)
    with pytest.raises(MissingPick, match="tuning seed is missing"):
        tuned(finetune, val, Net(), [0.01, 0.03], None, 0, RankedPicks([]))


def _run_plain(suite, out) -> int:
    return main(["--suite", str(suite), "--out", str(out), "--no-progress"])
