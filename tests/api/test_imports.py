"""One-way imports: the registry is a leaf, bench never imports plots, and lookups discover
the built-ins on demand."""
import subprocess
import sys

from tests.conftest import REPO


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_registry_alone_imports_no_client():
    out = _run("import sys, bench.registry; "
               "print(sorted(m for m in sys.modules if m.split('.')[0] in ('methods', 'plots') "
               "or m.startswith(('bench.data', 'bench.models', 'bench.runner', 'bench.job'))))")
    assert out == "[]"


def test_lookups_discover_builtins_without_listing_first():
    assert _run("from bench.registry import DATASETS, METHODS, NETWORKS; "
                "print('digits' in DATASETS, 'tt' in METHODS, 'fc2' in NETWORKS)") == "True True True"


def test_dataset_shape_comes_from_its_registration():
    assert _run("from bench.registry import dataset_spec; s = dataset_spec('cifar100'); "
                "print(s.shape, s.classes)") == "(3, 32, 32) 100"


def test_bench_never_imports_plots():
    offenders = []
    for path in (REPO / "bench").rglob("*.py"):
        text = path.read_text()
        if "import plots" in text or "from plots" in text:
            offenders.append(str(path.relative_to(REPO)))
    allowed = {"bench/cli.py"}  # the CLI is the one place that renders a suite's report
    assert set(offenders) <= allowed, offenders
