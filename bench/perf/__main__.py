"""Dispatch ``python -m bench.perf NAME [args]`` to ``bench.perf.NAME.main(args)``."""
import importlib
import pkgutil
import sys

import bench.perf


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.perf.__path__) if not m.name.startswith("_"))
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        print(f"usage: python -m bench.perf {{{'|'.join(names)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(f"bench.perf.{sys.argv[1]}").main(sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())
