"""``pip install .`` and ``pip install -e .`` in a fresh venv: ``import bench`` from any folder,
the ``tnbench`` console command, and a method found through an installed package's
``tnbench.methods`` entry point, without the checkout on the path. The new venv gets no
dependencies of its own (``--no-deps``): they come from this interpreter's site-packages."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

PLUGIN_PYPROJECT = textwrap.dedent('''
    [build-system]
    requires = ["setuptools>=64"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "tnbench-demo-plugin"
    version = "0.0.1"

    [project.entry-points."tnbench.methods"]
    demo-svd = "tnbench_demo_plugin"
''')
PLUGIN_MODULE = textwrap.dedent('''
    from bench.registry import register_method
    from methods.svd import TruncatedSVD

    @register_method("demo-svd")
    class DemoSVD(TruncatedSVD):
        """An installed plugin: found through the entry point, no --plugin needed."""
''')


def _pip(python: Path, *args: str, cwd: Path) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"pip install {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    venv.create(root / "env", with_pip=True)
    python = root / "env" / "bin" / "python"
    plugin = root / "plugin"
    plugin.mkdir()
    (plugin / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (plugin / "tnbench_demo_plugin.py").write_text(PLUGIN_MODULE)
    deps = os.pathsep.join(site.getsitepackages())
    return python, plugin, {**os.environ, "PYTHONPATH": deps}, root


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored): a build never sees stale build/ output
    or results, and leaves nothing in the checkout."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file() and not name.startswith("results/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def _in_tmp(python: Path, env: dict, cwd: Path, *args: str) -> str:
    proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_pip_install_gives_package_console_command_and_entry_points(fresh_venv):
    python, plugin, env, root = fresh_venv
    _pip(python, str(_source_copy(root / "src")), cwd=root)
    _pip(python, str(plugin), cwd=root)
    where = _in_tmp(python, env, root, "-c", "import bench, methods.adtn; print(bench.__file__)")
    assert "site-packages" in where and str(REPO) not in where
    listing = subprocess.run([str(python.parent / "tnbench"), "--list"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "demo-svd" in listing.stdout and "smoke" in listing.stdout and "adtn" in listing.stdout


def test_editable_install_points_at_the_checkout(fresh_venv):
    python, _, env, root = fresh_venv
    _pip(python, "-e", str(REPO), cwd=root)
    where = _in_tmp(python, env, root, "-c", "import bench; print(bench.__file__)")
    assert Path(where.strip()).resolve().is_relative_to(REPO.resolve())
