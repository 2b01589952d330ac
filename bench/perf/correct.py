"""Fit the cost model's corrections on recorded jobs and write them into a calibration file.

    python -m bench.perf correct --suites lenet5-v3,cifar10-headline --results results

For each (network, stage, method), and each cell (a job's layers, entry, budget and recipe
over its seeds and epoch counts), the median of measured / estimated seconds over the suites'
ok records made on one processor with one thread count (this machine's and this process's by
default), estimated by the bare calibrated model; the file's set for that processor and thread
count is replaced, the others stay (``corrections_sets``). Prints each factor, and each suite's
estimated / measured seconds per stage before (bare) and after (corrected: in-sample, a cell's own records fitted);
"held out" estimates each record with the factors of all the others, which is how the fit
predicts a job it has not seen (another seed of a measured cell, or a new cell by its method's
factor). Records that land later check it too (``run_all.py --dry-run`` sets its estimate
beside them).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.cost import STAGES, CostModel, compare_records, default_path, device_kind, load_calibration
from bench.cost_corrections import CELL, SETS, fit, legacy_set, pool, same_processor
from bench.cost_records import (estimated_as_ran, measured_alone, measured_baselines, pair_ratios, ratios,
                                record_stages)
from bench.errors import InputError


def _suite_records(spec: str, results: Path):
    """(jobs, latest record per key) of a suite's (a name or .yaml path) records under ``results``."""
    from bench.jobs import expand
    from bench.records import latest_by_key, read_records
    from bench.runner import records_path
    from bench.suite import load_suite

    suite = load_suite(spec)
    path = records_path(results, suite.name, False)
    if not path.is_file():
        raise InputError(f"--suites {spec}: no records at {path}")
    return expand(suite), latest_by_key(read_records(path), where=path)


def _job_s(stages: dict[str, float]) -> float:
    """A job's own seconds: every stage but its baseline's."""
    return sum(v for k, v in stages.items() if k != "baseline")


def spread(model: CostModel, jobs: list, records: dict) -> str:
    """Median and 10th-90th percentile of measured / estimated whole-job seconds per record
    (a sum over records is dominated by the few that shared the cores or were paused)."""
    return _quantiles([_job_s(record_stages(rec)) / max(_job_s(estimated_as_ran(model, j, rec, tuned)), 1e-9)
                       for j, rec, tuned in measured_alone(records, jobs)])


def held_out(bare: CostModel, pairs: list, mine: list, contributions: list | None = None
             ) -> tuple[dict, dict, list[float]]:
    """(estimated, measured seconds per stage, measured / estimated per job) of the ``mine``
    pairs (job, record, tuned) among ``pairs``, each estimated with the corrections fitted on
    every pair of ``pairs`` but itself: how the fit predicts a job it has not seen (a cell with
    one record falls back to its method's factor). Baselines are left out. ``contributions``:
    ``pair_ratios`` of each of ``pairs``, when the caller has them already."""
    contributions = contributions if contributions is not None else [pair_ratios(bare, *p) for p in pairs]
    chosen = {id(p) for p in mine}
    est, got, r = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0), []
    for i, pair in enumerate(pairs):
        if id(pair) not in chosen:
            continue
        samples: dict = {}
        for k, c in enumerate(contributions):
            if k != i:
                for key, value in c.items():
                    samples.setdefault(key, []).append(value)
        e = estimated_as_ran(CostModel({**bare.cal, "corrections": fit(samples)}), *pair)
        m = record_stages(pair[1])
        for s in STAGES:
            if s != "baseline":
                est[s] += e[s]
                got[s] += m[s]
        r.append(_job_s(m) / max(_job_s(e), 1e-9))
    return est, got, r


def _quantiles(r: list[float]) -> str:
    if not r:
        return "no jobs"
    r = sorted(r)
    q = lambda p: r[min(len(r) - 1, int(p * len(r)))]  # noqa: E731
    return f"median {statistics.median(r):.2f}, 10-90 % {q(0.1):.2f}-{q(0.9):.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf correct", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", required=True, help="comma-separated suites whose records to fit on")
    ap.add_argument("--results", default="results", help="results root holding <suite>/runs.jsonl and checkpoints/")
    ap.add_argument("--calibration", default=None, help="calibration file (default results/calibration/cpu.json)")
    ap.add_argument("--cpu-model", default=None,
                    help="fit only records made on this processor (env.cpu_model); default: this machine's")
    ap.add_argument("--cpu-id", default=None,
                    help="and of this kind (env.cpu_id: family, model, stepping); default: this machine's "
                         "when --cpu-model is not given, else any kind of that model")
    ap.add_argument("--threads", type=int, default=None,
                    help="fit only records made with this many threads (env.threads); default: the threads "
                         "this process trains with (OMP_NUM_THREADS), as the dry run estimates for them")
    ap.add_argument("--dry", action="store_true", help="print the factors, write nothing")
    args = ap.parse_args(argv)
    try:
        return correct(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def correct(args: argparse.Namespace) -> int:
    import torch

    from bench.environment import cpu_id, cpu_model

    path = Path(args.calibration) if args.calibration else default_path(device_kind("cpu"))
    cal = load_calibration(path)
    if cal is None:
        raise InputError(f"no calibration at {path} (python -m bench.perf calibrate makes one)")
    cpu, threads = args.cpu_model or cpu_model(), args.threads or torch.get_num_threads()
    kind = args.cpu_id or (None if args.cpu_model else cpu_id())
    bare, results = CostModel(cal, corrected=False), Path(args.results)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    loaded = {s: _suite_records(s, results) for s in suites}
    pairs, baselines = [], {}
    for jobs, records in loaded.values():
        mine = {k: r for k, r in records.items() if same_processor(r, cpu, threads, kind)}
        chosen = list(measured_alone(mine, jobs))
        pairs += chosen
        baselines.update(measured_baselines([j for j, _, _ in chosen], results))
    if not pairs:
        raise InputError(f"no ok records made on {cpu!r} ({kind or 'any kind'}) with {threads} thread(s) in "
                         f"{', '.join(suites)} under {results}")
    samples = ratios(bare, pairs, baselines)
    corrections, counts = fit(samples), pool(samples)
    print(f"{len(pairs)} records ({cpu}, {kind or 'any kind'}, {threads} thread(s)); measured / estimated, median (n):")
    for net, stages in corrections.items():
        for stage, per in stages.items():
            cells = sum(m.startswith(CELL) for m in per)
            print(f"  {net:8s} {stage:9s} " + ", ".join(
                f"{m} {f:.2f} ({len(counts[(net, stage, m)])})" for m, f in per.items() if not m.startswith(CELL))
                + (f"; {cells} cells" if cells else ""))
    fitted = CostModel({**cal, "corrections": corrections})
    contributions = [pair_ratios(bare, *p) for p in pairs]  # once for every suite's held-out line
    for name, (jobs, records) in loaded.items():
        for label, model in (("bare", bare), ("corrected", fitted)):
            n, est, got = compare_records(model, jobs, records, results)
            print(f"  {name} {label:9s} {n} jobs, estimated / measured s: "
                  + ", ".join(f"{s} {est[s]:,.0f} / {got[s]:,.0f}" for s in STAGES)
                  + f"; per job measured / estimated: {spread(model, jobs, records)}")
        mine = [p for p in pairs if p[0].suite == jobs[0].suite] if jobs else []
        est, got, r = held_out(bare, pairs, mine, contributions)
        print(f"  {name} held out  {len(mine)} jobs, each estimated with factors fitted on the other records: "
              + ", ".join(f"{s} {est[s]:,.0f} / {got[s]:,.0f}" for s in STAGES if s != "baseline")
              + f"; per job measured / estimated: {_quantiles(r)}")
    if args.dry:
        return 0
    cal.pop("path", None)
    this = (cpu, kind, threads)
    cal[SETS] = [c for c in _sets(cal) if (c.get("cpu_model"), c.get("cpu_id"), c.get("threads")) != this] + [
        {"cpu_model": cpu, "cpu_id": kind, "threads": threads, "suites": suites, "records": len(pairs),
         "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "corrections": corrections}]
    path.write_text(json.dumps(cal, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0


def _sets(cal: dict) -> list[dict]:
    """The file's correction sets, its older top-level set (``corrections``, ``corrections_from``)
    moved among them (and out of the top level, where it would win over every set)."""
    older = legacy_set(cal)
    cal.pop("corrections", None)
    cal.pop("corrections_from", None)
    return list(cal.get(SETS) or []) + ([older] if older else [])
