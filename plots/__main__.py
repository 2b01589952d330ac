"""``python -m plots paper --results results --out results/figures [--suites a,b,c]``;
``python -m plots verdicts [--check | --write]``: results/README.md's claims against the records."""
import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
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
    args = p.parse_args(argv)
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
