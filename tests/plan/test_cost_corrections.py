"""The cost model's corrections fitted on records (bench/cost_corrections.py, python -m bench.perf
correct): medians per network, stage and method, the fallback, and the round trip through a
calibration file that the dry run then reads."""
import json

import pytest

from bench.cli import main as cli
from bench.cost import CostModel, load_calibration
from bench.cost_corrections import ANY, CELL, SETS, cell, factor, fit, for_network, ranked, same_processor
from bench.cost_records import ratios
from bench.perf.correct import main as correct
from bench.records import append_record
from bench.suite import expand, load_suite
from tests.plan.test_cost import calibration


def test_fit_takes_medians_per_method_and_pools_the_rest():
    samples = {("net", "finetune", "tt"): [1.0, 2.0, 9.0],   # median 2: the 9 (a shared core) does not move it
               ("net", "finetune", "cp"): [4.0],
               ("other", "finetune", "tt"): [0.5],
               ("net", "baseline", ANY): [1.5]}
    got = fit(samples)
    assert got["net"] == {"finetune": {"tt": 2.0, "cp": 4.0, ANY: 3.0}, "baseline": {ANY: 1.5}}
    assert got[ANY]["finetune"] == {"tt": 1.5, "cp": 4.0}    # tt over both networks: median of 1, 2, 9, 0.5
    assert factor(got, "net", "finetune", "tt") == 2.0        # the method's own on the network
    assert factor(got, "other", "finetune", "svd") == 0.5     # a method without records: the network's pool
    assert factor(got, "new", "finetune", "cp") == 4.0        # a network without records: the method's pool
    assert factor(got, "net", "baseline", None) == 1.5
    assert factor(got, "net", "eval", "tt") == 1.0 and factor(got, "new", "finetune", "svd") == 1.0
    assert factor(None, "net", "finetune", "tt") == 1.0


def test_model_multiplies_each_stage_by_its_factor(tiny_suite):
    jobs = expand(load_suite(str(tiny_suite(ratios=[8]))))
    svd = next(j for j in jobs if j.method == "svd")
    cal = calibration(factorize={"svd": {"a": 1e-3, "b": 1.0}})
    bare = CostModel(cal)
    corrections = {"digitnet": {"finetune": {"svd": 2.0, ANY: 5.0}, "eval": {ANY: 3.0},
                                "factorize": {"tt": 7.0}, "baseline": {ANY: 4.0}}}
    fixed = CostModel({**cal, "corrections": corrections})
    b, f = bare.stages(svd, False, with_baseline=True), fixed.stages(svd, False, with_baseline=True)
    assert f["finetune"] == pytest.approx(2.0 * b["finetune"])      # the method's own factor
    assert f["eval"] == pytest.approx(3.0 * b["eval"])              # the network's pooled one
    assert f["factorize"] == pytest.approx(b["factorize"])          # tt's factor is not svd's
    assert f["baseline"] == pytest.approx(4.0 * b["baseline"])
    assert CostModel({**cal, "corrections": corrections}, corrected=False).stages(svd, False) == bare.stages(svd, False)


def test_only_records_of_this_processor_count():
    assert same_processor({"env": {"cpu_model": "AMD EPYC"}}, "AMD EPYC")
    assert not same_processor({"env": {"cpu_model": "Intel Xeon"}}, "AMD EPYC")
    assert same_processor({"env": {}}, "AMD EPYC")                  # older records do not say
    assert same_processor({"env": {"cpu_model": "AMD EPYC", "threads": 2}}, "AMD EPYC", threads=2)
    assert not same_processor({"env": {"cpu_model": "AMD EPYC", "threads": 1}}, "AMD EPYC", threads=2)
    zen4 = {"env": {"cpu_model": "AMD EPYC", "cpu_id": "family 25 model 17 stepping 1, AVX512"}}
    assert not same_processor(zen4, "AMD EPYC", cpu_id="family 26 model 2 stepping 1, AVX512")  # one name, two kinds
    assert same_processor(zen4, "AMD EPYC", cpu_id=zen4["env"]["cpu_id"]) and same_processor(zen4, "AMD EPYC")


def test_two_processors_of_one_model_name_are_two_kinds():
    """Two "AMD EPYC" generations ran the same LeNet-5 jobs 2x apart: an estimate takes the set
    of its own kind first, then one that does not say its kind, and calls another kind's set
    not its own."""
    from bench.cost_corrections import set_said

    z4, z5 = "family 25 model 17", "family 26 model 2"
    sets = [{"cpu_model": "AMD EPYC", "cpu_id": z4, "threads": 2, "records": 130, "corrections": {"n": {}}, "id": "z4"},
            {"cpu_model": "AMD EPYC", "threads": 2, "records": 50, "corrections": {"n": {}}, "id": "old"},
            {"cpu_model": "AMD EPYC", "cpu_id": z5, "threads": 1, "records": 90, "corrections": {"n": {}}, "id": "z5"},
            {"cpu_model": "Intel", "cpu_id": "family 6", "threads": 2, "records": 500, "corrections": {"n": {}},
             "id": "intel"}]
    assert [s["id"] for s in ranked({SETS: sets}, "AMD EPYC", 2, z5)] == ["old", "z5", "z4", "intel"]
    assert [s["id"] for s in ranked({SETS: sets}, "AMD EPYC", 1, z5)] == ["z5", "old", "z4", "intel"]
    assert [s["id"] for s in ranked({SETS: sets}, "AMD EPYC", 2, z4)] == ["z4", "old", "z5", "intel"]
    assert "not this run's processor" in set_said([sets[0]], ["n"], "AMD EPYC", 2, z5)
    assert "this processor, other threads" in set_said([sets[2]], ["n"], "AMD EPYC", 2, z5)
    assert set_said([sets[0]], ["n"], "AMD EPYC", 2, z4).endswith("2 thread(s)")


def _record(job, stages, cpu="test cpu"):
    return {"key": job.key, "status": "ok", "method": job.method, "env": {"cpu_model": cpu},
            "time_compress_s": stages["factorize"], "time_finetune_s": stages["finetune"],
            "time_total_s": stages["factorize"] + stages["finetune"] + stages["eval"]}


def test_correct_fits_the_records_and_the_dry_run_reads_the_factors(tiny_suite, tmp_path, capsys):
    """Records that took exactly 3x the bare estimate of each stage (svd) give factors of 3; a
    record from another processor is ignored; the dry run then estimates 3x."""
    suite = tiny_suite(ratios=[2, 8], seeds=[0, 1])
    jobs = expand(load_suite(str(suite)))
    cal_path = tmp_path / "cal.json"
    older = {"digitnet": {"finetune": {ANY: 9.0}}}  # a file's top-level set, as written before the sets
    cal_path.write_text(json.dumps({**calibration(factorize={"svd": {"a": 1e-3, "b": 1.0}}), "corrections": older,
                                    "corrections_from": {"cpu_model": "old cpu", "records": 7}}))
    bare = CostModel(load_calibration(cal_path), corrected=False)
    path = tmp_path / "results" / load_suite(str(suite)).name / "runs.jsonl"
    path.parent.mkdir(parents=True)
    svd = [j for j in jobs if j.method == "svd"]
    for j in svd[:3]:
        st = bare.stages(j, False)
        append_record(path, _record(j, {k: 3 * v for k, v in st.items()}))
    append_record(path, _record(svd[3], {k: 100 * v for k, v in bare.stages(svd[3], False).items()}, cpu="other"))
    assert correct(["--suites", str(suite), "--results", str(tmp_path / "results"),
                    "--calibration", str(cal_path), "--cpu-model", "test cpu", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 records (test cpu, any kind, 2 thread(s))" in out and "wrote" in out
    cal = load_calibration(cal_path)
    assert "corrections" not in cal and "corrections_from" not in cal  # the older set moved among the sets
    old, new = cal[SETS]
    assert (old["cpu_model"], old["records"], old["threads"], old["corrections"]) == ("old cpu", 7, cal["threads"], older)
    assert (new["cpu_model"], new["threads"], new["records"]) == ("test cpu", 2, 3)
    finetune = new["corrections"]["digitnet"]["finetune"]
    assert {m: f for m, f in finetune.items() if not m.startswith(CELL)} == {"svd": 3.0, ANY: 3.0}
    assert {m: f for m, f in finetune.items() if m.startswith(CELL)} == {cell(j): 3.0 for j in svd[:3]}
    assert new["corrections"]["digitnet"]["eval"]["svd"] == 3.0
    j = svd[3]
    assert CostModel(cal, cpu="test cpu", threads=2).job_s(j, False) == pytest.approx(3 * bare.job_s(j, False))
    assert for_network(CostModel(cal, cpu="old cpu", threads=1).correction_sets, "digitnet")["corrections"] == older
    capsys.readouterr()
    assert cli(["--suite", str(suite), "--dry-run", "--calibration", str(cal_path)]) == 0
    # this machine has no set: the dry run takes the one of most records (old cpu's 7) and says so
    assert "corrected on 7 records" in capsys.readouterr().out
    assert correct(["--suites", str(suite), "--results", str(tmp_path / "results"), "--calibration", str(cal_path),
                    "--cpu-model", "test cpu", "--threads", "2"]) == 0  # a refit replaces its own set only
    assert [(c["cpu_model"], c["threads"]) for c in load_calibration(cal_path)[SETS]] == [("old cpu", cal["threads"]),
                                                                                         ("test cpu", 2)]


def test_an_estimate_takes_the_set_of_its_processor_and_threads_with_records_of_its_network():
    """Sets best first: this processor and threads, this processor, most records; a network
    takes the first with records of it (Intel's 1-thread set, fitted on LeNet-5, would put its
    ADTN pre-fit factor on VGG-16's 2^24-weight generator)."""
    sets = [{"cpu_model": "A", "threads": 2, "records": 50, "corrections": {"vgg16": {}}, "id": "A2"},
            {"cpu_model": "A", "threads": 1, "records": 10, "corrections": {"lenet5": {}}, "id": "A1"},
            {"cpu_model": "B", "threads": 1, "records": 20, "corrections": {"lenet5": {}}, "id": "B1"}]
    ids = lambda cpu, threads: [s["id"] for s in ranked({SETS: sets}, cpu, threads)]  # noqa: E731
    assert ids("A", 1) == ["A1", "A2", "B1"] and ids("A", 2) == ["A2", "A1", "B1"]
    assert ids("B", 2) == ["B1", "A2", "A1"]   # its processor at other threads before another processor's
    assert ids("C", 2) == ["A2", "B1", "A1"]   # no set of its own: most records first
    mine = ranked({SETS: sets}, "B", 1)
    assert for_network(mine, "lenet5")["id"] == "B1" and for_network(mine, "vgg16")["id"] == "A2"
    assert for_network(mine, "fc2")["id"] == "B1"  # no set has it: the first set's pooled factors
    assert ranked({}, "A", 2) == [] and for_network([], "fc2") is None
    top = {SETS: sets, "corrections": {"n": {}}, "corrections_from": {"cpu_model": "Z"}}
    assert [s["cpu_model"] for s in ranked(top, "A", 1)] == ["Z"]  # a top-level set is used as given, alone


def test_a_network_takes_the_factors_of_the_set_that_measured_it(tiny_suite):
    jobs = expand(load_suite(str(tiny_suite(ratios=[8]))))
    svd = next(j for j in jobs if j.method == "svd")
    cal = calibration(factorize={"svd": {"a": 1e-3, "b": 1.0}})
    bare = CostModel(cal, corrected=False)
    sets = [{"cpu_model": "mine", "threads": 1, "records": 9, "corrections": {"other": {"finetune": {ANY: 5.0}},
                                                                              ANY: {"finetune": {"svd": 5.0}}}},
            {"cpu_model": "theirs", "threads": 2, "records": 3, "corrections": {"digitnet": {"finetune": {ANY: 2.0}}}}]
    model = CostModel({**cal, SETS: sets}, cpu="mine", threads=1)
    assert model.stages(svd, False)["finetune"] == pytest.approx(2.0 * bare.stages(svd, False)["finetune"])
