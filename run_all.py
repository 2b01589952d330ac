#!/usr/bin/env python3
"""tnbench: python run_all.py --suite NAME  (see --help and --list)."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
