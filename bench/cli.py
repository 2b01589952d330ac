"""Command line of ``run_all.py`` and the ``tnbench`` console command.

Every bad input is refused here, in one line naming the bad value and the valid ones, with
exit code 2, before any job runs or any file is written. Exit 1: some job failed."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from bench.cli_args import (CUSTOM_OUT, DEFAULT_OUT, UsageError, csv_values, no_empty_values, no_file_for_a_folder,
                            no_unread_flags, parse_args, refused)
from bench.errors import InputError, existing_file, one_line_warnings
from bench.plan import TUNE_SEED
from bench.records import OutputWriteError, write_cause
from bench.registry import METHODS, dataset_names, load_plugin, method_names, network_names
from bench.suite import SuiteError, expand, load_suite, suite_names
from bench.spec import Suite

def print_list() -> None:
    print("suites:")
    for name in suite_names():
        try:
            about = load_suite(name).description
        except SuiteError as e:  # one broken suite file must not hide the others
            about = f"(invalid: {e})"
        print(f"  {name:18s} {about}")
    print("methods:  " + ", ".join(method_names()))
    print("networks: " + ", ".join(network_names()))
    print("datasets: " + ", ".join(dataset_names()))



def print_suite(suite: Suite, jobs) -> None:
    """The resolved suite, as the sweep reads it: one place to see what ``base:`` and ``--set``
    made of the files."""
    import yaml

    print(yaml.safe_dump(suite.as_mapping(), sort_keys=False, default_flow_style=None, width=100).rstrip())
    print(f"# {len(jobs)} jobs")


def add_plugin_methods(suite: Suite, wanted: list[str] | None) -> Suite:
    """Methods named in --methods that the suite lacks but a plugin (or methods/) registered
    join the suite, so they run beside its methods and its tables keep every method."""
    have = {e.method for e in suite.methods} | {e.label for e in suite.methods}
    return suite.with_methods([n for n in dict.fromkeys(wanted or []) if n not in have and n in METHODS])


#: workers one sweep may start: a device may repeat (two workers on one GPU), but a list that
#: forks hundreds of processes is a typo, not a plan
MAX_WORKERS = 64


def check_devices(devices: list[str]) -> None:
    import torch

    if len(devices) > MAX_WORKERS:
        raise UsageError(f"--devices: {len(devices)} workers asked for; at most {MAX_WORKERS} (one per device "
                         "entry; repeat a device for two workers on it)")
    for d in devices:
        try:
            dev = torch.device("cuda" if d == "auto" and torch.cuda.is_available() else
                               "cpu" if d == "auto" else d)
        except (RuntimeError, ValueError):
            raise UsageError(f"unknown device {d!r}; valid: cpu, cuda, cuda:N, auto") from None
        if dev.type == "cuda":
            n = torch.cuda.device_count()
            if n == 0:
                raise UsageError(f"device {d!r} asked for, but CUDA is not available here; valid: cpu, auto")
            if dev.index is not None and dev.index >= n:
                raise UsageError(f"device {d!r} does not exist; valid: cpu, auto, cuda:0..cuda:{n - 1}")
        elif dev.type != "cpu":
            raise UsageError(f"device {d!r} is not supported; valid: cpu, cuda, cuda:N, auto")


def check_data(jobs, data_dir: Path | None, download: bool) -> None:
    """Say once, up front, which dataset file is bad (checksum, magic, size) and why."""
    from bench.data import verify_dataset

    for name in sorted({j.dataset for j in jobs}):
        verify_dataset(name, data_dir, download)


def check_writable(out: Path, records: Path) -> None:
    """``--out`` must be (or can become) a writable folder, and its records file a regular file,
    before anything runs: a job's result used to be lost after it ran (fsync on /dev/null, a
    folder where the records file should be)."""
    for p in (out, records.parent):
        if p.exists() and not p.is_dir():
            raise UsageError(f"--out {out}: {p} is not a folder")
    if records.exists() and not records.is_file():
        raise UsageError(f"--out {out}: the records file {records} is not a regular file"
                         + (f" (a link to {os.path.realpath(records)})" if records.is_symlink() else ""))
    existing = next(p for p in (records.parent, *records.parent.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK) or (records.exists() and not os.access(records, os.W_OK)):
        raise UsageError(f"--out {out}: {records if records.exists() else existing} is not writable")


def resolve_out(args, suite_spec: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    committed = not suite_spec.endswith((".yaml", ".yml"))
    if committed and (args.methods or args.networks or args.overrides or args.fit_only):
        print(f"note: a subset or override of suite {suite_spec!r} writes to {CUSTOM_OUT}/ "
              f"(--out {DEFAULT_OUT} to write beside the committed records)", file=sys.stderr)
        return CUSTOM_OUT
    return DEFAULT_OUT


#: what exits 2 with one line; any other exception is a bug (traceback, exit 1)
BAD_INPUT = (InputError, FileNotFoundError)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (a BaseException, so
    no job's ``except Exception`` records it as a failure); claims are released on the way out."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """The CLI; exit 0 ok, 1 some job failed, 2 bad input or a record not written, 130 Ctrl-C,
    143 SIGTERM (each interruption one line: finished records are kept, a re-run resumes)."""
    args = parse_args(argv)
    one_line_warnings()
    try:
        no_unread_flags(args)
        if args.check_plugin is not None:
            return check_plugin(args.check_plugin)
    except BAD_INPUT as e:
        return refused(e)
    previous = _install(signal.SIGTERM, _raise_terminated)
    try:
        try:
            prepared = prepare(args)
        except BAD_INPUT as e:
            return refused(e)
        return 0 if prepared is None else execute(args, *prepared)
    except BrokenPipeError:  # ``--list | head``: the reader left; say nothing more, as a killed-by-SIGPIPE tool would
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except (KeyboardInterrupt, Terminated) as e:
        what, code = ("Ctrl-C", 130) if isinstance(e, KeyboardInterrupt) else ("SIGTERM", 143)
        print(f"interrupted ({what}): finished records are kept; run the same command again to resume",
              file=sys.stderr)
        return code
    finally:
        _install(signal.SIGTERM, previous)


def check_plugin(spec: str) -> int:
    """``--check-plugin``: the contract on each method the plugin registers, one line each."""
    from bench.registry import get_method, plugin_methods
    from bench.testing import ContractViolation, check_compressor

    load_plugin(spec)
    names = plugin_methods(spec)
    if not names:
        raise UsageError(f"plugin {spec} registers no method (use bench.registry.register_method)")
    broken = 0
    for name in names:
        try:
            results = check_compressor(get_method(name))
        except ContractViolation as e:
            print(f"{name}: breaks the contract: {e}")
            broken += 1
            continue
        except Exception as e:  # noqa: BLE001 - the plugin's own error, named for its author
            print(f"{name}: raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            broken += 1
            continue
        print(f"{name}: keeps the contract (" + ", ".join(f"{k} {v}" for k, v in results.items()) + ")")
    return 1 if broken else 0


def _install(signum, handler):
    """Set a signal handler where Python allows it (the main thread), returning the old one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


def prepare(args):
    """Everything checked before anything runs or is written: None when the command is done
    (--list, --dry-run), else (suite, jobs, records path, output root, devices, fit_only)."""
    no_empty_values(args)
    for spec in args.plugin:
        load_plugin(spec)
    if args.list:
        print_list()
        return None
    if not args.suite:
        raise UsageError("--suite NAME is required (or --list)")
    suite = load_suite(args.suite, args.overrides)
    wanted = csv_values(args.methods, "--methods")
    suite = add_plugin_methods(suite, wanted)
    fit_only = suite.fit_only or args.fit_only
    jobs = expand(suite, wanted, csv_values(args.networks, "--networks"), fit_only)
    if args.print_suite:
        print_suite(suite, jobs)
        return None
    devices = csv_values(args.devices, "--devices", unique=False) or [args.device or "auto"]  # a device twice: two workers on it
    if args.time_budget is not None and not (args.time_budget > 0 and args.time_budget < float("inf")):
        raise UsageError(f"--time-budget {args.time_budget:g}: expected a number of minutes > 0")
    if not args.report_only:  # the folders a run reads and writes: a file there is refused, dry run too
        no_file_for_a_folder(args)
        if args.data_dir is None:
            from bench.data import default_data_dir  # torch: imported only by the commands that need it

            default_data_dir()
    if args.dry_run:  # estimating a device's run needs no such device here: the syntax is checked
        kind, cost, cal_path = cost_model(args, devices, jobs, check=False)
        from bench.dry_run import dry_run

        dry_run(jobs, cost, kind, cal_path, Path(args.out) if args.out else DEFAULT_OUT, tuple(suite.protocol.reuse),
                ordered=bool(suite.priority))
        return None
    check_devices(devices)
    kind, cost, cal_path = cost_model(args, devices, jobs)
    if args.time_budget is not None and cost is None:
        raise UsageError(f"--time-budget needs a calibration for {kind}: {cal_path} does not exist "
                         f"(python -m bench.perf calibrate --device {kind}, or --calibration FILE)")
    args.cost = cost
    from bench.runner import records_path

    out = resolve_out(args, args.suite)
    path = records_path(out, suite.name, fit_only)
    check_writable(out, path)
    if args.report_only and not path.exists():
        raise UsageError(f"no records to report: {path} does not exist (run the suite first)")
    if not args.report_only:
        check_data(jobs, _data_dir(args), not args.no_download)
    return suite, jobs, path, out, devices, fit_only


def cost_model(args, devices: list[str], jobs, check: bool = True):
    """(device kind, CostModel or None, calibration path) for the first device; a calibration
    that lacks one of the jobs' networks is a usage error."""
    from bench.cost import CostModel, default_path, device_kind, load_calibration

    spec = devices[0]
    if spec != "auto" and not spec.startswith(("cpu", "cuda")):
        raise UsageError(f"unknown device {spec!r}; valid: cpu, cuda, cuda:N, auto")
    kind = device_kind(spec)
    path = Path(args.calibration) if args.calibration else default_path(kind)
    if args.calibration:
        existing_file(path, "--calibration", UsageError)
    cal = load_calibration(path)
    if cal is None:
        return kind, None, path
    missing = sorted({j.network for j in jobs} - set(cal["networks"]))
    if missing:
        raise UsageError(f"calibration {path} has no network {', '.join(missing)}; it has "
                         f"{', '.join(sorted(cal['networks']))} (python -m bench.perf calibrate --networks ...)")
    return kind, CostModel(cal), path


def execute(args, suite, jobs, path: Path, out: Path, devices: list[str], fit_only: bool) -> int:
    from bench.cost import Budget
    from bench.records import RecordIndex, mend_records
    from bench.runner import RunSettings, adopt_equal, run_jobs
    from bench.kept_baselines import keep, kept_folder, seed_cache, seeding_suites
    from bench.stale import CachedBaselines

    counts = None
    cost = getattr(args, "cost", None)
    if not args.report_only:
        progress = not args.no_progress and sys.stderr.isatty() and not os.environ.get("CI")
        settings = RunSettings(out=out, data_dir=_data_dir(args), download=not args.no_download, progress=progress,
                               checkpoints=DEFAULT_OUT if out == CUSTOM_OUT else out)
        budget = None
        if args.time_budget is not None:
            budget = Budget(args.time_budget * 60, cost, jobs, baseline_root=settings.baseline_root)
        try:
            for name in seeding_suites(suite.name, suite.protocol.reuse):
                seeded = seed_cache(out, name, settings.baseline_root)
                if seeded:
                    print(f"{suite.name}: {seeded} dense baselines taken from {kept_folder(out, name)}",
                          file=sys.stderr)
            mend_records(path)  # a torn tail from a killed sweep goes even if nothing is left to run
            records = RecordIndex(path)  # read once for the whole sweep (bench.runner.Sweep)
            if not args.rerun:
                copied = adopt_equal(jobs, path, out, list(suite.protocol.reuse), records.refresh(),
                                     CachedBaselines(settings.baseline_root))
                if copied:
                    print(f"{suite.name}: took {copied} records of equal jobs instead of running them "
                          f"(reused_from: {', '.join(suite.protocol.reuse) or 'none'}; same_as: the same "
                          f"measurement under another key)", file=sys.stderr)
            counts = run_jobs(jobs, settings, devices, path, backend=args.backend, address=args.address,
                              plugins=args.plugin, rerun=args.rerun, budget=budget, cost=cost,
                              ordered=bool(suite.priority), records=records)
            if args.keep_baselines:
                n = keep(out, suite.name, settings.baseline_root, list({j.baseline_key: j.baseline_config
                                                                        for j in jobs}.values()))
                print(f"{suite.name}: {n} dense baselines kept in {kept_folder(out, suite.name)}", file=sys.stderr)
        except (RuntimeError, OutputWriteError) as e:  # a record or checkpoint did not land (disk full, ...)
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 2
        left = counts.get("claimed_elsewhere", 0)
        later = counts.get("left_for_later", 0)
        unpicked = counts.get("waiting_for_pick", 0)
        print(f"{suite.name}: {counts['total']} jobs, {counts['already_done']} already done, "
              f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
              + (f", {left} left to another sweep holding them" if left else "")
              + (f", {later} left for later (time budget {args.time_budget:g} min; run again to do them)"
                 if later else "")
              + (f", {unpicked} waiting for the lr pick of seed {TUNE_SEED}, which has no record yet on the cached "
                 f"baseline (another sweep is making it, or seed {TUNE_SEED} was not run: run it, then run again)" if unpicked else ""))
    from plots.suite_report import write_reports

    full = expand(suite, fit_only=fit_only)  # report on the whole suite, not only --methods
    try:
        for written in write_reports(out / suite.name, {j.key for j in full}):
            print(f"wrote {written}")
    except (OSError, RuntimeError) as e:  # a full disk while writing a table or plot; the records are kept
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: cannot write the report{where}: {write_cause(e)} (the records are kept; "
              f"--report-only rebuilds it)", file=sys.stderr)
        return 2
    return 1 if counts and counts["failed"] else 0


def _data_dir(args) -> Path | None:
    return Path(args.data_dir) if args.data_dir else None


def run() -> None:
    """The ``tnbench`` console command."""
    sys.exit(main())
