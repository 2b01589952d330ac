"""``python -m plots`` keeps run_all.py's promise: a bad input is one ``error:`` line, exit 2,
and nothing written (``compare-protocols --old ''`` used to overwrite a committed
before_after.md with an empty comparison)."""
from __future__ import annotations

import json

import pytest

from plots.__main__ import main


@pytest.fixture
def results(tmp_path):
    """A results folder with one suite's records and a claims file, and nothing else."""
    root = tmp_path / "results"
    (root / "new").mkdir(parents=True)
    (root / "new" / "runs.jsonl").write_text(json.dumps({"key": "k", "status": "failed"}) + "\n")
    (root / "claims.yaml").write_text("- just a list\n")
    (tmp_path / "a_file").write_text("x")
    return root


CASES = [
    (["paper", "--results", "@tmp/none", "--out", "@tmp/fig"], "--results @tmp/none: no such folder"),
    (["paper", "--results", "@results", "--out", "@tmp/a_file"], "--out @tmp/a_file: not a folder"),
    (["paper", "--results", "@results", "--out", ""], "--out '': an empty value"),
    (["paper", "--results", "@results", "--out", "@tmp/fig", "--suites", "nosuch"], "unknown suite 'nosuch'"),
    (["paper", "--results", "@results", "--out", "@tmp/fig", "--suites", "../x"], "'../x': expected a suite's name"),
    (["paper", "--results", "@results", "--out", "@tmp/fig", "--suites", "mnist,mnist"], "mnist given twice"),
    (["verdicts", "--results", "@results"], "expected a mapping of block name to a list of claims"),
    (["verdicts", "--results", "@results", "--claims", "@tmp/none.yaml"], "claims file @tmp/none.yaml: no such file"),
    (["compare-protocols", "--results", "@results", "--new", "nosuch", "--old", "new"], "--new nosuch: no records"),
    (["compare-protocols", "--results", "@results", "--new", "new", "--old", ""], "--old '': an empty value"),
    (["compare-protocols", "--results", "@results", "--new", "..", "--old", "new"], "--new '..': expected a suite's"),
    (["verdicts", "--check", "--write"], "not allowed with argument --check"),
    (["paper", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv, says", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_plots_input_is_one_line_exit_2_and_writes_nothing(argv, says, results, tmp_path, capsys):
    subst = {"@results": str(results), "@tmp": str(tmp_path)}

    def fill(text: str) -> str:
        for token, value in subst.items():
            text = text.replace(token, value)
        return text

    before = sorted(p for p in tmp_path.rglob("*"))
    try:
        code = main([fill(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals exit through the parser
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fill(says) in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before
