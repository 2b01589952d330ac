"""Suite files: `base:` inheritance and the expansion into jobs."""
import collections
import pytest

from bench.suite import SuiteError, expand, load_suite, suite_names


def _write(tmp_path, text):
    path = tmp_path / "child.yaml"
    path.write_text(text)
    return str(path)


def test_child_recipe_keys_merge_into_the_base_recipe(tmp_path):
    base = load_suite("mnist")
    child = load_suite(_write(tmp_path, "base: mnist\nfinetune: {epochs: 5}\ndata: {train_subset: 1000}\n"))
    assert child.finetune == {**base.finetune, "epochs": 5}
    assert child.finetune["lr"] == base.finetune["lr"] == 0.01
    assert child.data == {"val_fraction": 0.1, "train_subset": 1000}
    assert child.train == base.train and child.methods == base.methods


def test_a_child_deletes_an_inherited_key_with_null(tmp_path):
    child = load_suite(_write(tmp_path, "base: mnist\nfinetune: {schedule: null}\npaper: null\n"))
    assert "schedule" in load_suite("mnist").finetune and "schedule" not in child.finetune
    assert child.paper is None


def test_the_protocol_is_inherited_as_one_unit(tmp_path):
    """A child that writes protocol: gets none of its base's protocol keys (mnist's epoch sweep,
    tune_epochs and reuse would otherwise survive half-inherited)."""
    base = load_suite("mnist")
    assert base.protocol.finetune_epochs == (1, 3) and base.protocol.epochs("lenet5") == (1,)
    child = load_suite(_write(tmp_path, "base: mnist\nprotocol: {seeds: [0, 1]}\n"))
    assert child.protocol.seeds == (0, 1) and child.protocol.lr_grid is None
    assert child.protocol.epochs("fc2") is None and child.protocol.reuse == () and child.protocol.tune_epochs is None
    kept = load_suite(_write(tmp_path, "base: mnist\nratios: [8]\n"))
    assert kept.protocol == base.protocol


@pytest.mark.parametrize("text, override, message", [
    ("base: mnist\nseeds: [0]\n", None, r"seeds belong\(s\) under protocol: .*--set protocol.seeds="),
    ("base: mnist\n", "seeds=[0]", r"--set seeds: seeds belongs under protocol: --set protocol.seeds=\[0\]"),
    ("base: mnist\nprotocol: {sedes: [0]}\n", None, r"protocol: unknown key\(s\) \['sedes'\]; valid: seeds"),
    ("base: mnist\nprotocol: [0]\n", None, r"protocol \[0\]: expected a mapping"),
    ("base: mnist\nprotocol: {network_epochs: {lenet9: [1]}}\n", None, "unknown network 'lenet9'"),
    ("base: mnist\nprotocol: {network_epochs: {lenet5: [0]}}\n", None, r"protocol.network_epochs.lenet5.finetune_epochs"),
    ("base: mnist\nrecipes: {lenet5: {finetune_epochs: [1]}}\n", None, "protocol.network_epochs"),
])
def test_protocol_keys_live_in_the_protocol_block(tmp_path, text, override, message):
    with pytest.raises(SuiteError, match=message):
        load_suite(_write(tmp_path, text), [override] if override else None)


def test_the_spec_is_frozen():
    import dataclasses

    suite = load_suite("mnist")
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.ratios = (2.0,)
    with pytest.raises(TypeError):
        suite.finetune["lr"] = 1.0
    with pytest.raises(TypeError):
        suite.methods[5].options["prefit_steps"] = 1
    job = expand(suite)[0]
    job.finetune["lr"] = 1.0  # a job's recipe is its own copy: the spec is untouched
    assert suite.finetune["lr"] == 0.01


def test_child_replaces_other_keys_whole(tmp_path):
    child = load_suite(_write(tmp_path, "base: mnist\nnetworks: {fc2: [fc1]}\nmethods: [svd]\nprotocol: {seeds: [3]}\n"))
    jobs = expand(child)
    assert {j.network for j in jobs} == {"fc2"} and {j.method for j in jobs} == {"svd"}
    assert {j.seed for j in jobs} == {3} and all(j.layers == ["fc1"] for j in jobs)


def test_unknown_base_lists_the_suites(tmp_path):
    with pytest.raises(SuiteError, match="base suite 'nope' is unknown.*known: .*mnist"):
        load_suite(_write(tmp_path, "base: nope\n"))


def test_fit_mnist_inherits_the_mnist_methods_and_baselines():
    fit, mnist = load_suite("fit-mnist"), load_suite("mnist")
    assert fit.methods == mnist.methods and fit.train == mnist.train and fit.fit_only is True


def test_fit_only_keys_ignore_the_fine_tuning_recipe():
    plain = {j.key for j in expand(load_suite("fit-mnist"), fit_only=True)}
    longer = {j.key for j in expand(load_suite("fit-mnist", ["finetune.batch_size=64"]), fit_only=True)}
    assert plain == longer
    trained = {j.key for j in expand(load_suite("mnist"))}
    assert trained != {j.key for j in expand(load_suite("mnist", ["finetune.batch_size=64"]))}


# --- record keys stay stable ------------------------------------------------------------------
def _job(suite, **match):
    return next(j for j in expand(suite) if all(getattr(j, k) == v for k, v in match.items()))


PRE_V2_MNIST = """
datasets: [mnist]
networks: {fc2: [fc1, fc2], lenet5: [conv2, conv3, fc1, fc2]}
methods: [dense, svd]
ratios: [2, 8]
protocol: {seeds: [0, 1]}
train: {epochs: 6, batch_size: 128, optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, schedule: cosine}
finetune: {epochs: 1, batch_size: 128, optimizer: sgd, lr: 0.01, momentum: 0.9, weight_decay: 5.0e-4, schedule: cosine}
data: {val_fraction: 0.1}
"""


def test_key_of_a_known_mnist_job_is_unchanged(tmp_path):
    """A pre-v2 mnist job (no lr_grid) keeps the key it was recorded under before lr_grid and
    finetune_epochs existed: adding keys never re-keys old records."""
    path = tmp_path / "mnist.yaml"
    path.write_text(PRE_V2_MNIST)
    job = _job(load_suite(str(path)), network="fc2", method="svd", target_ratio=8.0, seed=0)
    assert job.key == "e659ea54e8088166"
    assert "lr_grid" not in job.config()


def _committed_suites():
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "results"
    for name in suite_names():
        for records in ("runs.jsonl", "fit_runs.jsonl"):
            if (results / name / records).exists():
                yield pytest.param(name, results / name / records, id=name)


@pytest.mark.parametrize("name, path", list(_committed_suites()))
def test_committed_records_cover_every_job_of_their_suite(name, path):
    """A committed suite's records were made under its current definition: every job has one.
    A suite still being run (a ``PARTIAL.md`` beside its records says what is missing) commits
    its finished seeds as they land: each of its records is then one of the suite's jobs."""
    from bench.records import read_records

    suite = load_suite(name)
    fit_only = suite.fit_only or path.name == "fit_runs.jsonl"
    keys = {j.key for j in expand(suite, fit_only=fit_only)}
    recorded = {r["key"] for r in read_records(path)}
    if (path.parent / "PARTIAL.md").exists():
        assert recorded and recorded <= keys
    else:
        assert keys <= recorded


# --- YAML numbers -----------------------------------------------------------------------------
def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    suite = load_suite(_write(tmp_path, "base: mnist\nfinetune: {lr: 1e-3, weight_decay: 5.0e-4}\n"),
                       ["train.lr=1e-2", "finetune.epochs=1e0"])
    assert suite.finetune["lr"] == 0.001 and suite.finetune["weight_decay"] == 0.0005
    assert suite.train["lr"] == 0.01 and suite.finetune["epochs"] == 1.0
    assert load_suite("mnist", ["finetune.lr=1e6"]).finetune["lr"] == 1e6


def test_yaml_special_floats_and_plain_strings():
    from bench.suite import parse_yaml

    assert parse_yaml("[1e6, +1E3, .5, .inf, -.inf]", "t") == [1e6, 1e3, 0.5, float("inf"), float("-inf")]
    nan = parse_yaml(".nan", "t")
    assert nan != nan
    assert parse_yaml("[abc, 1e, e6, 3, 0x10]", "t") == ["abc", "1e", "e6", 3, 16]


@pytest.mark.parametrize("text, message", [
    ("datasets: [digits\n", r"child.yaml: not valid YAML \(.* at line 2, column 1\)"),
    ("- a list\n", "a suite is a YAML mapping, got list"),
])
def test_malformed_suite_file_is_one_line(tmp_path, text, message):
    with pytest.raises(SuiteError, match=message) as e:
        load_suite(_write(tmp_path, text))
    assert "\n" not in str(e.value)


# --- new keys -----------------------------------------------------------------------------------
def test_finetune_epochs_expands_each_job_once_per_value():
    one = ["networks={fc2: [fc1]}", "protocol.tune_epochs=null"]
    plain = expand(load_suite("mnist", one + ["protocol.finetune_epochs=null"]))
    swept = expand(load_suite("mnist", one + ["protocol.finetune_epochs=[1, 3]"]))
    assert len(swept) == 2 * len(plain)
    assert sorted({j.finetune["epochs"] for j in swept}) == [1, 3]
    assert len({j.key for j in swept}) == len(swept)
    # finetune.epochs is 1 in mnist: those jobs are the plain suite's, with the same keys
    assert {j.key for j in swept if j.finetune["epochs"] == 1} == {j.key for j in plain}


def test_a_recipe_sets_its_networks_own_epoch_sweep():
    # mnist: FC-2 sweeps [1, 3] (its ranking settles at 3), LeNet-5 only 1 (settled at 1)
    jobs = expand(load_suite("mnist"))
    epochs = {n: sorted({j.finetune["epochs"] for j in jobs if j.network == n}) for n in ("fc2", "lenet5")}
    assert epochs == {"fc2": [1, 3], "lenet5": [1]}
    per_net = collections.Counter((j.network, j.finetune["epochs"]) for j in jobs)
    assert per_net[("fc2", 1)] == per_net[("fc2", 3)] == per_net[("lenet5", 1)]


def test_finetune_epochs_do_not_multiply_fit_only_jobs():
    plain = expand(load_suite("fit-mnist"), fit_only=True)
    swept = expand(load_suite("fit-mnist", ["protocol.finetune_epochs=[1, 3]"]), fit_only=True)
    assert [j.key for j in swept] == [j.key for j in plain]


def test_lr_grid_enters_the_key_and_tune_key_is_shared_by_seeds():
    one = ["protocol.finetune_epochs=null", "protocol.tune_epochs=null"]
    plain = _job(load_suite("mnist", one + ["protocol.lr_grid=null"]), network="fc2", method="svd", target_ratio=8.0, seed=0)
    suite = load_suite("mnist", one + ["protocol.lr_grid=[0.003, 1e-2, 0.03]"])
    job0 = _job(suite, network="fc2", method="svd", target_ratio=8.0, seed=0)
    job1 = _job(suite, network="fc2", method="svd", target_ratio=8.0, seed=1)
    assert job0.lr_grid == [0.003, 0.01, 0.03] and job0.config()["lr_grid"] == job0.lr_grid
    assert job0.key != plain.key and job0.key != job1.key
    assert job0.tune_key == job1.tune_key
    other_lr = _job(load_suite("mnist", one + ["protocol.lr_grid=[0.003, 1e-2, 0.03]", "finetune.lr=0.1"]),
                    network="fc2", method="svd", target_ratio=8.0, seed=0)
    assert other_lr.tune_key == job0.tune_key and other_lr.key != job0.key
    other_budget = _job(suite, network="fc2", method="svd", target_ratio=32.0, seed=0)
    assert other_budget.tune_key != job0.tune_key


def test_paper_roles_are_validated_and_do_not_change_jobs():
    from bench.suite import PAPER_ROLES

    keys = [j.key for j in expand(load_suite("mnist", ["paper=[accuracy, equal-budget]"]))]
    assert keys == [j.key for j in expand(load_suite("mnist"))]
    with pytest.raises(SuiteError, match="paper: bad value 'acc'; .*accuracy, fit"):
        load_suite("mnist", ["paper=[acc]"])
    assert "convergence" in PAPER_ROLES


# --- checks that build networks ----------------------------------------------------------------
def test_layer_check_builds_networks_without_drawing_random_numbers():
    import torch

    torch.manual_seed(0)
    load_suite("cifar10")
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_every_built_in_suite_validates():
    from bench.suite import suite_names

    for name in suite_names():
        load_suite(name)


def test_input_shape_of_known_datasets():
    from bench.meta_network import input_shape

    assert input_shape("mnist") == ((1, 28, 28), 10)
    assert input_shape("cifar100") == ((3, 32, 32), 100)


def test_optional_recipe_keys_stay_out_of_keys_until_set():
    """``compile`` is absent from a recipe unless a suite sets it: old records keep their keys."""
    plain = load_suite("smoke")
    assert "compile" not in expand(plain)[0].train
    compiled = expand(load_suite("smoke", ["train.compile=true"]))[0]
    assert compiled.train["compile"] is True and compiled.key != expand(plain)[0].key


def test_print_suite_shows_the_suite_as_it_runs(capsys):
    """``--print-suite``: base: merged, --set applied, the job count of the run; nothing runs."""
    import yaml

    from bench.cli import main

    assert main(["--suite", "cifar10-conv", "--print-suite", "--set", "protocol.seeds=[4]"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    suite = load_suite("cifar10-conv", ["protocol.seeds=[4]"])
    assert printed == suite.as_mapping()
    assert printed["protocol"]["seeds"] == [4]
    assert printed["train"]["epochs"] == load_suite("cifar10-headline").train["epochs"]
    assert out.rstrip().endswith(f"# {len(expand(suite))} jobs")


def test_methods_selects_a_label_exactly_and_a_bare_method_name_by_method():
    """lenet5-v3 has entries labelled adtn and adtn-interleaved (both method adtn): --methods adtn
    is the first only; cp-minmax / cp-paired are reached by their labels, a method name that is
    no label (none here) would take every entry of it."""
    suite = load_suite("lenet5-v3")
    assert {j.label for j in expand(suite, methods=["adtn"])} == {"adtn"}
    assert {j.label for j in expand(suite, methods=["adtn-interleaved", "cp"])} == {"adtn-interleaved", "cp"}
    mixed = load_suite("lenet5-v3", ["methods=[dense, {method: cp, label: cp-paired, options: {layout: paired}}, "
                                     "{method: cp, label: cp-minmax, options: {allocation: minmax}}]"])
    assert {j.label for j in expand(mixed, methods=["cp"])} == {"cp-paired", "cp-minmax"}
