"""``python -m plots paper --results results --out results/figures [--suites a,b,c]``;
``python -m plots verdicts [--check | --write]``: results/README.md's claims against the records;
``python -m plots compare-protocols --new lenet5-v3 --old mnist,fashion-mnist``: cells before and after.

As ``run_all.py``: a bad input is one ``error:`` line and exit 2; anything else is a bug and
keeps its traceback."""
import sys
from pathlib import Path

from bench.cli_args import OneLineParser, UsageError, csv_values, refused
from bench.errors import InputError


def parse_args(argv=None):
    p = OneLineParser(prog="python -m plots")
    sub = p.add_subparsers(dest="command", required=True)
    paper = sub.add_parser("paper", help="every paper figure and table from recorded results")
    paper.add_argument("--results", default="results")
    paper.add_argument("--out", default="results/figures")
    paper.add_argument("--suites", default=None,
                       help="comma-separated suite names (default: the suites whose YAML declares `paper:`)")
    paper.add_argument("--suites-dir", default=None, help="where the suite YAML files are (default bench/suites)")
    paper.add_argument("--check", action="store_true",
                       help="write nothing: rebuild into a temporary folder and exit 1 when a table (.md, .csv, "
                            ".tex) or the index differs from --out's (images are not compared byte for byte; "
                            "the index names them)")
    verdicts = sub.add_parser("verdicts", help="check results/claims.yaml against the records and the README's "
                                               "claims blocks (--check, the default) or rewrite the blocks (--write)")
    verdicts.add_argument("--results", default="results")
    verdicts.add_argument("--claims", default=None, help="default RESULTS/claims.yaml")
    verdicts.add_argument("--readme", default=None, help="default RESULTS/README.md")
    mode = verdicts.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when a claim fails or a README block is stale")
    mode.add_argument("--write", action="store_true", help="rewrite the README's claims blocks (exit 1 if a claim fails)")
    compare = sub.add_parser("compare-protocols", help="a suite's cells beside the same cells of the suites it "
                                                       "re-runs under a new protocol, per seed")
    compare.add_argument("--results", default="results")
    compare.add_argument("--new", required=True, help="the re-run suite (e.g. lenet5-v3)")
    compare.add_argument("--old", required=True, help="comma-separated suites it re-runs (e.g. mnist,fashion-mnist)")
    compare.add_argument("--out", default=None, help="default RESULTS/NEW/before_after.md")
    return p.parse_args(argv)


def _path(value: str | None, flag: str) -> Path | None:
    """A path flag's value; an empty one is refused (``Path('')`` would mean the working folder)."""
    if value is not None and not value.strip():
        raise UsageError(f"{flag} {value!r}: an empty value; give a path")
    return None if value is None else Path(value)


def _folder(path: Path, flag: str, must_exist: bool = True) -> Path:
    if path.exists() and not path.is_dir() or must_exist and not path.exists():
        raise UsageError(f"{flag} {path}: {'not a folder' if path.exists() else 'no such folder'}")
    return path


def _suite_name(name: str, flag: str) -> str:
    """A suite's name: a word, never a path (``..`` would read outside --results)."""
    from bench.suite_schema import SUITE_NAME

    if not SUITE_NAME.fullmatch(name):
        raise UsageError(f"{flag} {name!r}: expected a suite's name (letters, digits, '_', '.', '-'; no paths)")
    return name


def _records(results: Path, name: str, flag: str) -> Path:
    path = results / _suite_name(name, flag) / "runs.jsonl"
    if not path.is_file():
        raise UsageError(f"{flag} {name}: no records at {path}")
    return path


def paper(args) -> int:
    from plots.paper import SUITES_DIR, build

    results = _folder(_path(args.results, "--results"), "--results")
    out = _folder(_path(args.out, "--out"), "--out", must_exist=False)
    suites_dir = _folder(_path(args.suites_dir, "--suites-dir"), "--suites-dir") if args.suites_dir is not None \
        else SUITES_DIR
    suites = csv_values(args.suites, "--suites")
    for name in suites or []:
        _suite_name(name, "--suites")
        if not (suites_dir / f"{name}.yaml").is_file() and not (results / name).is_dir():
            raise UsageError(f"--suites: unknown suite {name!r}: no {suites_dir / (name + '.yaml')} and no "
                             f"records folder {results / name}")
    if args.check:
        return _check_paper(results, out, suites, suites_dir)
    try:
        made = build(results, out, suites, suites_dir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for path, _ in made:
        print(f"wrote {path}")
    return 0


TABLE_SUFFIXES = (".md", ".csv", ".tex")


def _check_paper(results: Path, out: Path, suites, suites_dir) -> int:
    """``paper --check``: whether the committed tables are what the records give now."""
    import tempfile

    from plots.paper import build

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        try:
            build(results, fresh, suites, suites_dir, index_for=out)
        except ValueError as e:
            raise UsageError(str(e)) from None
        names = {p.name for d in (fresh, out) if d.is_dir() for p in d.iterdir() if p.suffix in TABLE_SUFFIXES}
        stale = sorted(n for n in names if not (fresh / n).is_file() or not (out / n).is_file()
                       or (fresh / n).read_bytes() != (out / n).read_bytes())
    if stale:
        print(f"{out}: {len(stale)} table(s) differ from what the records give now: {', '.join(stale)} "
              f"(run: python -m plots paper --results {results} --out {out})")
        return 1
    print(f"{out}: every table matches the records")
    return 0


def verdicts(args) -> int:
    from bench.verdicts import run

    results = _folder(_path(args.results, "--results"), "--results")
    return run(results, _path(args.claims, "--claims"), _path(args.readme, "--readme"), write=args.write)


def compare_protocols(args) -> int:
    from plots.protocol_compare import compare

    results = _folder(_path(args.results, "--results"), "--results")
    new = _records(results, args.new, "--new")
    names = csv_values(args.old, "--old", optional=False)
    old = [_records(results, s, "--old") for s in names]
    out = _path(args.out, "--out") or new.parent / "before_after.md"
    text = compare(new, old, f"{args.new} beside {', '.join(names)}: before and after")
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    from bench.errors import one_line_warnings

    one_line_warnings()
    args = parse_args(argv)
    command = {"paper": paper, "verdicts": verdicts, "compare-protocols": compare_protocols}[args.command]
    try:
        return command(args)
    except InputError as e:
        return refused(e)


if __name__ == "__main__":
    sys.exit(main())
