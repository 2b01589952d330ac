"""The command line's flags, and the checks a flag's value gets before anything is planned.

Kept apart from :mod:`bench.cli` (which wires the parsed flags to the planner, runner and report)
so that each reads in one sitting."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import InputError

DEFAULT_OUT = Path("results")
#: where a subset or override of a committed suite writes unless --out says otherwise, so it
#: never rewrites the committed tables, plots or records (baselines stay shared)
CUSTOM_OUT = DEFAULT_OUT / "_custom"


class UsageError(InputError, ValueError):
    """A command line that does not make sense; exit 2."""


def refused(e: BaseException) -> int:
    """A bad input, said as both command lines say it: its first line after ``error:`` on
    stderr; exit code 2."""
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (it prints the whole usage block otherwise)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="tnbench", description="Compare compression methods at equal parameter budgets.")
    p.add_argument("--suite", help="suite name (see --list) or path to a suite .yaml")
    p.add_argument("--list", action="store_true", help="list suites, methods, networks and datasets")
    p.add_argument("--methods", help="comma-separated methods to run: a label runs that entry; a method name "
                                     "that is no label runs every entry of that method; ones added by --plugin "
                                     "run beside the suite's")
    p.add_argument("--networks", help="comma-separated subset of the suite's networks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite key, e.g. --set finetune.epochs=1 --set protocol.seeds=[0]")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--devices", help="comma-separated devices to run jobs on concurrently, e.g. cuda:0,cuda:1")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default) or ray: one Ray task per job on a cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, HOST:PORT); default: a local instance")
    p.add_argument("--out", default=None,
                   help=f"results root (default: {DEFAULT_OUT}/; a subset or override of a committed suite "
                        f"defaults to {CUSTOM_OUT}/)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $TNBENCH_DATA or ./data)")
    p.add_argument("--no-download", action="store_true", help="never download missing datasets")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their planned parameter counts")
    p.add_argument("--print-suite", action="store_true",
                   help="print the suite as it runs (base: merged, --set applied, validated) as YAML, and its job count")
    p.add_argument("--report-only", action="store_true", help="rebuild tables and plots from the records")
    p.add_argument("--fit-only", action="store_true", help="weight-space fit study: compress, measure, no training")
    p.add_argument("--rerun", action="store_true",
                   help="run the selected jobs again even if recorded (e.g. after changing a method's code); "
                        "the new records supersede the old ones, which stay in the file")
    p.add_argument("--keep-baselines", action="store_true",
                   help="copy the dense baselines of the sweep into OUT/<suite>/baselines/ (commit them with the "
                        "records of small networks: a later sweep on another machine then starts from the same "
                        "baselines; every sweep copies what is there into its checkpoint cache)")
    p.add_argument("--plugin", action="append", default=[], help="extra method module: import path or .py file")
    p.add_argument("--check-plugin", metavar="PLUGIN", default=None,
                   help="run the compressor contract (bench.testing) on every method PLUGIN (a .py file or "
                        "import path) registers, then exit: 0 all pass, 1 a method breaks it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are off anyway when "
                                                              "stderr is not a terminal)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="start no job the cost model says would not finish in the time left; the rest is "
                        "left for later (a re-run does it); needs a calibration")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="cost-model calibration (default results/calibration/<cpu|cuda>.json for the device; "
                        "made by python -m bench.perf calibrate)")
    return p.parse_args(argv)


#: flags whose value is one path or name: an empty one must not mean "here" or "the default"
_ONE_VALUE_FLAGS = {"suite": ("--suite", "a suite name or .yaml path"), "out": ("--out", "a folder"),
                    "data_dir": ("--data-dir", "a folder"), "calibration": ("--calibration", "a .json file"),
                    "address": ("--address", "a Ray address (auto or HOST:PORT)")}


def no_empty_values(args) -> None:
    """``--out ''`` used to write into the working folder, ``--data-dir ''`` to read the default one:
    an empty or blank value of a one-value flag is refused instead (``load_plugin`` refuses an empty
    ``--plugin``)."""
    for attr, (flag, what) in _ONE_VALUE_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None and not str(value).strip():
            raise UsageError(f"{flag} {value!r}: an empty value; give {what}")


def no_file_for_a_folder(args) -> None:
    """``--out`` and ``--data-dir`` name folders: an existing file there is refused in every mode.
    A dry run used to accept ``--data-dir /etc/hosts`` or ``--out`` a file that the run then refused."""
    for attr in ("out", "data_dir"):
        value = getattr(args, attr, None)
        if value and Path(value).exists() and not Path(value).is_dir():
            flag, what = _ONE_VALUE_FLAGS[attr]
            raise UsageError(f"{flag} {value}: a file, not a folder; give {what}")


def csv_values(value: str | None, flag: str, unique: bool = True, optional: bool = True) -> list[str] | None:
    """The comma-separated values of ``flag``; None when the flag is absent. An empty value
    (``--devices ''``, ``tt,,cp``) is refused rather than read as "all" or "here", and so is a
    value given twice where that would mean nothing more (``unique``)."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise UsageError(f"{flag} {value!r}: an empty value; give comma-separated names"
                         + (f", or leave {flag} out" if optional else ""))
    if unique:
        twice = sorted({v for v in items if items.count(v) > 1})
        if twice:
            raise UsageError(f"{flag} {value!r}: {', '.join(twice)} given twice")
    return items


#: flags that make the command do one thing and stop; two of them would leave one unread
_MODES = {"list": "--list", "print_suite": "--print-suite", "dry_run": "--dry-run", "report_only": "--report-only",
          "check_plugin": "--check-plugin"}
#: flags that only a run reads
_RUN_ONLY = {"rerun": "--rerun", "time_budget": "--time-budget", "keep_baselines": "--keep-baselines"}


def no_unread_flags(args) -> None:
    """A flag the command would not read is refused rather than ignored: ``--rerun
    --report-only`` re-ran nothing, ``--devices`` beside ``--device`` or under ``--backend ray``
    (Ray places the jobs) was dropped, ``--address`` without Ray meant nothing."""
    given = lambda attr: getattr(args, attr, None) not in (None, False)  # noqa: E731
    modes = [flag for attr, flag in _MODES.items() if given(attr)]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)}: each does one thing and stops; give one")
    run_only = [flag for attr, flag in _RUN_ONLY.items() if given(attr)]
    if modes and run_only:
        raise UsageError(f"{', '.join(run_only)} with {modes[0]}: only a run reads it; leave it out")
    if given("devices") and given("device"):
        raise UsageError("--device and --devices: give one (--devices cpu,cpu runs two workers)")
    if given("devices") and args.backend == "ray":
        raise UsageError("--devices with --backend ray: Ray places the jobs on its own workers; leave --devices out")
    if given("address") and args.backend != "ray":
        raise UsageError(f"--address {args.address}: only --backend ray reads it")

