"""Suite files: `base:` inheritance and the expansion into jobs."""
import pytest

from bench.suite import SuiteError, expand, load_suite


def _write(tmp_path, text):
    path = tmp_path / "child.yaml"
    path.write_text(text)
    return str(path)


def test_child_recipe_keys_merge_into_the_base_recipe(tmp_path):
    base = load_suite("mnist")
    child = load_suite(_write(tmp_path, "base: mnist\nfinetune: {epochs: 5}\ndata: {train_subset: 1000}\n"))
    assert child["finetune"] == {**base["finetune"], "epochs": 5}
    assert child["finetune"]["lr"] == base["finetune"]["lr"] == 0.01
    assert child["data"] == {"val_fraction": 0.1, "train_subset": 1000}
    assert child["train"] == base["train"] and child["methods"] == base["methods"]


def test_child_replaces_other_keys_whole(tmp_path):
    child = load_suite(_write(tmp_path, "base: mnist\nnetworks: {fc2: [fc1]}\nmethods: [svd]\nseeds: [3]\n"))
    jobs = expand(child)
    assert {j.network for j in jobs} == {"fc2"} and {j.method for j in jobs} == {"svd"}
    assert {j.seed for j in jobs} == {3} and all(j.layers == ["fc1"] for j in jobs)


def test_unknown_base_lists_the_suites(tmp_path):
    with pytest.raises(SuiteError, match="base suite 'nope' is unknown.*known: .*mnist"):
        load_suite(_write(tmp_path, "base: nope\n"))


def test_fit_mnist_inherits_the_mnist_methods_and_baselines():
    fit, mnist = load_suite("fit-mnist"), load_suite("mnist")
    assert fit["methods"] == mnist["methods"] and fit["train"] == mnist["train"] and fit["fit_only"] is True


def test_fit_only_keys_ignore_the_fine_tuning_recipe():
    plain = {j.key for j in expand(load_suite("fit-mnist"), fit_only=True)}
    longer = {j.key for j in expand(load_suite("fit-mnist", ["finetune.epochs=9"]), fit_only=True)}
    assert plain == longer
    trained = {j.key for j in expand(load_suite("mnist"))}
    assert trained != {j.key for j in expand(load_suite("mnist", ["finetune.epochs=9"]))}
