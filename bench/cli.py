"""Command line of ``run_all.py``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.registry import UnknownNameError, dataset_names, load_plugin, method_names, network_names
from bench.suite import SuiteError, expand, load_suite, suite_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_all.py", description="Compare compression methods at equal parameter budgets.")
    p.add_argument("--suite", help="suite name (see --list) or path to a suite .yaml")
    p.add_argument("--list", action="store_true", help="list suites, methods, networks and datasets")
    p.add_argument("--methods", help="comma-separated subset of the suite's methods (names or labels)")
    p.add_argument("--networks", help="comma-separated subset of the suite's networks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite key, e.g. --set finetune.epochs=1 --set seeds=[0]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--devices", help="comma-separated devices to run jobs on concurrently, e.g. cuda:0,cuda:1")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default) or ray: one Ray task per job on a cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, HOST:PORT); default: a local instance")
    p.add_argument("--out", default="results", help="results root (default: results/)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $TNBENCH_DATA or ./data)")
    p.add_argument("--no-download", action="store_true", help="never download missing datasets")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their planned parameter counts")
    p.add_argument("--report-only", action="store_true", help="rebuild tables and plots from the records")
    p.add_argument("--fit-only", action="store_true", help="weight-space fit study: compress, measure, no training")
    p.add_argument("--rerun", action="store_true",
                   help="run the selected jobs again even if recorded (e.g. after changing a method's code); "
                        "the new records supersede the old ones, which stay in the file")
    p.add_argument("--plugin", action="append", default=[], help="extra method module: import path or .py file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def print_list() -> None:
    import yaml

    from bench.suite import SUITES_DIR

    print("suites:")
    for name in suite_names():  # descriptions only: a suite is validated when it is run
        raw = yaml.safe_load((SUITES_DIR / f"{name}.yaml").read_text()) or {}
        print(f"  {name:14s} {(raw.get('description') or '').strip()}")
    print("methods:  " + ", ".join(method_names()))
    print("networks: " + ", ".join(network_names()))
    print("datasets: " + ", ".join(dataset_names()))


def dry_run(jobs) -> None:
    """Plan each job on an untrained network of the right shape (no data, no training)."""
    from bench.compressor import dense_params
    from bench.runner import plan_on_untrained

    networks: dict = {}
    for j in jobs:
        try:
            plan = plan_on_untrained(j, networks)
            dense = sum(dense_params(m) for m in plan.layers.values())
            if plan.skip_reason:
                line = f"skipped: {plan.skip_reason}"
            elif plan.knobs is None:
                line = f"knobs chosen from the trained weights at run time (dense: {dense:,} params)"
            else:
                planned = sum(plan.method.layer_params(plan.layers[n], k) for n, k in plan.knobs.items())
                line = f"params {planned:>10,} of {dense:,} ({dense / planned:8.1f}x)  knobs {plan.knobs}"
        except Exception as e:  # noqa: BLE001 - show it, as the run would record it
            line = f"cannot plan: {type(e).__name__}: {e}"
        print(f"{j.key}  {j.network}/{j.dataset} {j.label:12s} {j.budget:>10s} seed {j.seed}  {line}")
    print(f"{len(jobs)} jobs")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for spec in args.plugin:
            load_plugin(spec)
        if args.list:
            print_list()
            return 0
        if not args.suite:
            print("error: --suite NAME is required (or --list)", file=sys.stderr)
            return 2
        suite = load_suite(args.suite, args.overrides)
        fit_only = bool(suite.get("fit_only")) or args.fit_only
        jobs = expand(suite, _csv(args.methods), _csv(args.networks), fit_only)
    except (SuiteError, UnknownNameError, FileNotFoundError, ImportError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from bench.report import write_reports
    from bench.runner import RunSettings, records_path, run_jobs

    out = Path(args.out)
    suite_dir = out / suite["name"]
    if args.dry_run:
        dry_run(jobs)
        return 0
    if not args.report_only:
        data_dir = Path(args.data_dir) if args.data_dir else None
        settings = RunSettings(out=out, data_dir=data_dir, download=not args.no_download,
                               progress=not args.no_progress and not os.environ.get("CI"))
        devices = _csv(args.devices) or [args.device]
        try:
            counts = run_jobs(jobs, settings, devices, records_path(out, suite["name"], fit_only),
                              backend=args.backend, address=args.address, plugins=args.plugin,
                              rerun=args.rerun)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{suite['name']}: {counts['total']} jobs, {counts['already_done']} already done, "
              f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped")
    full = expand(suite, fit_only=fit_only)  # report on the whole suite, not only --methods
    for path in write_reports(suite_dir, {j.key for j in full}):
        print(f"wrote {path}")
    if not args.report_only and counts["failed"]:
        return 1
    return 0


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
