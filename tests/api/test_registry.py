"""Registry, plugin loading and error messages."""
import subprocess
import sys
import textwrap

import pytest

from bench.compressor import Compressor
from bench.registry import (METHODS, PluginError, UnknownNameError, get_method, is_reference, load_plugin,
                            method_names, register_method)
from tests.conftest import REPO

PLUGIN = textwrap.dedent('''
    """A test plugin: svd under another name."""
    from bench.registry import register_method
    from methods.svd import TruncatedSVD

    @register_method("{name}")
    class Renamed(TruncatedSVD):
        pass
''')


def test_builtin_methods_registered():
    assert {"dense", "svd"} <= set(method_names())


def test_reference_is_a_role_of_the_class(monkeypatch):
    """dense is the reference because its class says so: a plugin's reference row is one too,
    and a name that is not registered (a record of an unloaded plugin) is simply not one."""
    assert is_reference("dense")
    assert not is_reference("tt")
    assert not is_reference("no-such-method")
    assert not is_reference(None) and not is_reference(["dense"])

    def no_build(self, **options):
        raise AssertionError("is_reference must not build the method")

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the throwaway name leaves with the test
    register_method("test-reference")(type("Ref", (Compressor,), {"reference": True, "__init__": no_build}))
    assert is_reference("test-reference")
    assert "test-reference" in method_names()


def test_unknown_method_lists_known():
    with pytest.raises(UnknownNameError, match="unknown method 'nope'; known: .*svd"):
        get_method("nope")


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError, match="takes no options"):
        get_method("svd", bogus=1)


def test_plugin_file_registers(tmp_path):
    path = tmp_path / "myplug.py"
    path.write_text(PLUGIN.format(name="myplug-svd"))
    load_plugin(str(path))
    assert "myplug-svd" in method_names()


def test_missing_plugin_file_is_clear():
    with pytest.raises(PluginError, match="plugin file not found"):
        load_plugin("/no/such/plugin.py")


def test_plugin_shows_in_list_and_runs_in_suite(tmp_path, tiny_suite):
    path = tmp_path / "extra.py"
    path.write_text(PLUGIN.format(name="extra-svd"))
    listing = subprocess.run([sys.executable, "run_all.py", "--plugin", str(path), "--list"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    assert "extra-svd" in listing
    suite = tiny_suite(methods=["extra-svd"], ratios=[4])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "run_all.py", "--plugin", str(path), "--suite", str(suite),
                          "--out", str(out), "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    from bench.records import read_records

    recs = read_records(out / suite.stem / "runs.jsonl")
    assert [r["method"] for r in recs] == ["extra-svd"] and recs[0]["status"] == "ok"
