"""``--dry-run``: what each job of a suite would do (planned on an untrained network of the
right shape: no data, no training) and, with a calibration, what it would cost per stage."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.cost import STAGES, baseline_cached, compare_records
from bench.cost_corrections import set_said
from bench.environment import environment
from bench.planning import plan_on_untrained, planned_copies, planned_loaded_starts
from bench.kept_baselines import is_kept, kept_folder, seeding_suites
from bench.layers import dense_params
from bench.records import RecordIndex
from bench.runner import equal_copies, planned_skip, records_path
from bench.stale import CachedBaselines, at_risk, at_risk_note, stale_keys


def dry_run(jobs, cost=None, kind: str = "cpu", cal_path: Path | None = None,
            baseline_root: Path = Path("results"), reuse: tuple[str, ...] = (), ordered: bool = False) -> None:
    """Plan each job on an untrained network of the right shape (no data, no training) and,
    with a calibration (``cost``), estimate each job's time per stage (``bench.cost.STAGES``),
    each baseline and frozen-prefix cache once, and the suite's total; where the suite has
    records, set the estimate of the recorded jobs beside their measured times. A job whose
    allocation and recipe equal an earlier one's copies its measurement (``same_as``) and is
    costed nothing (``bench.planning.planned_copies``); one that loads a compressed start an earlier job
    keeps is costed no factorisation (``bench.planning.planned_loaded_starts``). A job the sweep
    would not run (recorded and current, or copied from an equal record of this suite or of the
    suites in ``reuse``: ``bench.runner.equal_copies``) is marked and costed nothing, so the
    total is what running the command now would take. ``ordered`` (the suite has a
    ``priority``): the total is also split by priority stage, in the order the sweep runs them
    (what a ``--time-budget`` of so many minutes reaches)."""
    def plan_line(j, pre) -> tuple[str, bool]:
        """What the job would do, and whether it is recorded skipped (in no time)."""
        if pre is not None:
            return f"skipped: {pre['error']}", True
        try:
            plan = plan_on_untrained(j, networks)
        except Exception as e:  # noqa: BLE001 - show it, as the run would record it
            return f"cannot plan: {type(e).__name__}: {e}", False
        dense = sum(dense_params(m) for m in plan.layers.values())
        if plan.skip_reason:
            return f"skipped: {plan.skip_reason}", True
        if plan.knobs is None:
            return f"knobs chosen from the trained weights at run time (dense: {dense:,} params)", False
        try:
            planned = sum(plan.method.layer_params(plan.layers[n], k) for n, k in plan.knobs.items())
        except Exception as e:  # noqa: BLE001 - a knob the method refuses: the run records it failed
            return f"cannot size: {type(e).__name__}: {e}", False
        return f"params {planned:>10,} of {dense:,} ({dense / planned:8.1f}x)  {plan.method.knob_name} {plan.knobs}", False

    networks: dict = {}
    pre = {j.key: planned_skip(j, cost) for j in jobs}
    lines = {j.key: plan_line(j, pre[j.key]) for j in jobs}
    copies = planned_copies([j for j in jobs if not lines[j.key][1]], networks)
    path = records_path(baseline_root, jobs[0].suite, jobs[0].fit_only) if jobs else None
    index = RecordIndex(path).refresh() if path is not None else None
    # the sweep seeds its cache from the kept baselines of these suites before it looks for stale records
    kept = [kept_folder(baseline_root, n) for n in seeding_suites(jobs[0].suite, reuse)] if jobs else []
    baselines = CachedBaselines(baseline_root, kept)
    stale = stale_keys(jobs, index.latest, baselines) if index else set()  # the sweep runs those again
    done = {k: "recorded" for k in ((index.done() - stale) & {j.key for j in jobs} if index else ())}
    if index is not None:
        for k, c in equal_copies(jobs, index, baseline_root, list(reuse), baselines).items():
            done[k] = "copied: " + ", ".join(f"{f} {c[f]}" for f in ("reused_from", "same_as") if c.get(f))
    costs = {} if cost is None else cost.suite_stages(
        jobs, cached={j.baseline_key for j in jobs if baseline_cached(baseline_root, j)
                      or is_kept(baseline_root, seeding_suites(j.suite, reuse), j.baseline_config)},
        skipped={k for k, (_, skip) in lines.items() if skip} | set(copies) | set(done),
        loaded_starts=planned_loaded_starts([j for j in jobs if not lines[j.key][1] and j.key not in copies
                                             and j.key not in done], networks))
    est: dict[tuple[str, str], list[dict[str, float]]] = {}
    group_est: dict[tuple[str, str], list[float]] = {}  # (network, baselines | prefix caches)
    skipped: Counter = Counter()
    copied: Counter = Counter()
    n_done: Counter = Counter()
    for j in jobs:
        line, skip = lines[j.key]
        if j.key in done:
            line = f"{done[j.key]}: {line}"
            n_done[(j.network, j.label)] += 1
        elif j.key in copies:
            line = f"same as {copies[j.key]}: {line}"
            copied[(j.network, j.label)] += 1
        timing = ""
        if cost is not None:
            st = dict(costs[j.key])
            for stage, group in (("baseline", "(baselines)"), ("cache", "(prefix caches)")):
                if st[stage]:
                    group_est.setdefault((j.network, group), []).append(st[stage])
                st[stage] = 0.0
            est.setdefault((j.network, j.label), []).append(st)
            skipped[(j.network, j.label)] += skip
            timing = f"  est {sum(st.values()):9.1f} s"
        print(f"{j.key}  {j.network}/{j.dataset} {j.label:12s} {j.budget:>10s} seed {j.seed}{timing}  {line}")
    planned = {k for k in copies if k not in done}
    print(f"{len(jobs)} jobs" + (f", {len(done)} of them recorded already or copied from equal records"
                                 if done else "")
          + (f", {len(planned)} of them copies of an earlier job's measurement (same allocation "
             f"and recipe: run once, recorded same_as)" if planned else ""))
    todo = {j.key for j in jobs if j.key not in done and j.key not in copies and not lines[j.key][1]}
    risky = at_risk(jobs, index.latest, baselines, todo) if index is not None else []
    if risky:
        again = None if cost is None else sum(sum(st.values()) for st in cost.suite_stages(
            risky, cached={j.baseline_key for j in risky}).values())
        print(at_risk_note(risky, index.latest, environment(), again))
    if cost is None:
        print(f"no time estimates: no calibration for {kind} ({cal_path} does not exist; "
              f"python -m bench.perf calibrate --device {kind} makes it)")
        return
    cal = cost.cal
    networks_here = dict.fromkeys(j.network for j in jobs)
    whose = set_said(cost.correction_sets, networks_here, cost.cpu, cost.threads, cost.cpu_id)
    threads = f"calibrated with {cal.get('threads')} threads" + (
        f", this run {cost.threads}" if cost.threads and cost.threads != cal.get('threads') else "")
    print(f"estimated time on {kind} ({cal.get('device_name')}, {threads}, calibration "
          f"{cost.path}{'' if any('precisions' in n for n in cal['networks'].values()) else '; no per-precision speeds'}"
          f"; {whose}):")
    shown = ("factorize", "finetune", "eval")
    print(f"  {'network':9s} {'method':15s} {'jobs':>5s} {'done':>5s} {'skipped':>8s} {'copies':>7s} "
          + " ".join(f"{s:>11s}" for s in shown) + f" {'seconds':>12s}")
    by_stage = dict.fromkeys(STAGES, 0.0)
    for net in dict.fromkeys(j.network for j in jobs):
        for (n, label), ts in group_est.items():
            if n == net:
                by_stage["baseline" if label == "(baselines)" else "cache"] += sum(ts)
                print(f"  {net:9s} {label:15s} {len(ts):>5d} {'':>5s} {'':>8s} {'':>7s} "
                      + " ".join(f"{'':>11s}" for _ in shown)
                      + f" {sum(ts):>12,.1f}")
        for (n, label), sts in est.items():
            if n == net:
                sums = {s: sum(st[s] for st in sts) for s in STAGES}
                for s in STAGES:
                    by_stage[s] += sums[s]
                print(f"  {net:9s} {label:15s} {len(sts):>5d} {n_done[(n, label)]:>5d} {skipped[(n, label)]:>8d} "
                      f"{copied[(n, label)]:>7d} "
                      + " ".join(f"{sums[s]:>11,.1f}" for s in shown) + f" {sum(sums.values()):>12,.1f}")
    total = sum(by_stage.values())
    print("  by stage: " + ", ".join(f"{s} {by_stage[s]:,.0f} s" for s in STAGES))
    if ordered:
        by_priority: dict[str, float] = {}
        for j in jobs:  # in run order; a job's baseline and cache count in the stage that pays them
            by_priority[j.stage] = by_priority.get(j.stage, 0.0) + sum(costs[j.key].values())
        print("  by priority stage, in run order: " + ", ".join(f"{s} {t:,.0f} s" for s, t in by_priority.items()))
    print(f"  total: {total:,.0f} s = {total / 60:,.1f} min = {total / 3600:,.2f} h "
          "(done jobs, and baselines in the checkpoint cache or kept with the records, cost nothing)")
    print("  records time the stages as: baseline = time_train_s (checkpoint .json), cache = time_prefix_cache_s, "
          "factorize = time_allocate_s + time_compress_s, finetune = time_finetune_s, eval = the rest of time_total_s")
    if index is not None and index.latest:
        n, e, m = compare_records(cost, jobs, {k: r for k, r in index.latest.items() if k not in stale},
                                  baseline_root)
        if n:
            print(f"  {n} recorded jobs ({path}), estimated / measured s: "
                  + ", ".join(f"{s} {e[s]:,.0f} / {m[s]:,.0f}" for s in STAGES))
