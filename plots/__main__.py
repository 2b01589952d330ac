"""``python -m plots paper --results results --out results/figures``."""
import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m plots")
    sub = p.add_subparsers(dest="command", required=True)
    paper = sub.add_parser("paper", help="every paper figure and table from recorded results")
    paper.add_argument("--results", default="results", type=Path)
    paper.add_argument("--out", default="results/figures", type=Path)
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: no results folder {args.results}", file=sys.stderr)
        return 2
    from plots.paper import build

    for path, _ in build(args.results, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
