"""``python -m plots paper --results results --out results/figures [--suites a,b,c]``;
``python -m plots verdicts [--check | --write]``: results/README.md's claims against the records;
``python -m plots compare-protocols --new lenet5-v3 --old mnist,fashion-mnist``: cells before and after."""
import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    from bench.errors import one_line_warnings

    one_line_warnings()
    p = argparse.ArgumentParser(prog="python -m plots")
    sub = p.add_subparsers(dest="command", required=True)
    paper = sub.add_parser("paper", help="every paper figure and table from recorded results")
    paper.add_argument("--results", default="results", type=Path)
    paper.add_argument("--out", default="results/figures", type=Path)
    paper.add_argument("--suites", default=None,
                       help="comma-separated suite names (default: the suites whose YAML declares `paper:`)")
    paper.add_argument("--suites-dir", default=None, type=Path, help="where the suite YAML files are (default bench/suites)")
    verdicts = sub.add_parser("verdicts", help="check results/claims.yaml against the records and the README's "
                                               "claims blocks (--check, the default) or rewrite the blocks (--write)")
    verdicts.add_argument("--results", default="results", type=Path)
    verdicts.add_argument("--claims", default=None, type=Path, help="default RESULTS/claims.yaml")
    verdicts.add_argument("--readme", default=None, type=Path, help="default RESULTS/README.md")
    mode = verdicts.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when a claim fails or a README block is stale")
    mode.add_argument("--write", action="store_true", help="rewrite the README's claims blocks (exit 1 if a claim fails)")
    compare = sub.add_parser("compare-protocols", help="a suite's cells beside the same cells of the suites it "
                                                       "re-runs under a new protocol, per seed")
    compare.add_argument("--results", default="results", type=Path)
    compare.add_argument("--new", required=True, help="the re-run suite (e.g. lenet5-v3)")
    compare.add_argument("--old", required=True, help="comma-separated suites it re-runs (e.g. mnist,fashion-mnist)")
    compare.add_argument("--out", default=None, type=Path, help="default RESULTS/NEW/before_after.md")
    args = p.parse_args(argv)
    if args.command == "compare-protocols":
        from plots.protocol_compare import compare as compare_protocols

        old = [args.results / s / "runs.jsonl" for s in args.old.split(",") if s]
        text = compare_protocols(args.results / args.new / "runs.jsonl", old,
                                 f"{args.new} beside {', '.join(args.old.split(','))}: before and after")
        out = args.out or args.results / args.new / "before_after.md"
        out.write_text(text)
        print(f"wrote {out}")
        return 0
    if args.command == "verdicts":
        from bench.verdicts import run

        return run(args.results, args.claims, args.readme, write=args.write)
    if not args.results.is_dir():
        print(f"error: no results folder {args.results}", file=sys.stderr)
        return 2
    from plots.paper import SUITES_DIR, build

    suites = [s for s in args.suites.split(",") if s] if args.suites else None
    try:
        made = build(args.results, args.out, suites, args.suites_dir or SUITES_DIR)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, _ in made:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
