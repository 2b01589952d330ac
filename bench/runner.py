"""The driver of a sweep: decides which jobs still need running, hands them to a backend
(bench/backends), and alone writes their records, stamped with the code version and the
environment once, here. A key's latest record is the one reports use.

Guarantees: every job of the list ends the run recorded (ok, skipped or failed), already done,
left to another sweep that holds its claim, or left for later by ``--time-budget`` (never
recorded, so the next run does it); the counts printed add up to the job list.

Before anything runs, jobs the suite rules out are recorded ``skipped`` (``planned_skip``): a
budget the method cannot get near (``budget_tolerance``) and a factorisation the calibration
says is longer than ``factorize_time_cap_s`` (such a record is reconsidered when the cap or
the calibration changes).
"""
from __future__ import annotations

import functools
import itertools
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from bench.backends import CLAIMED, HANDED, LEFT, WAITING, Marker, Outcome, key_of
from bench.backends.local import HandedToTrainers, run_groups, run_parallel
from bench.chance import chance_accuracy, needs_fallback
from bench.claims import Claims
from bench.environment import code_version, environment
from bench.job import failed_record
from bench.jobs import job_fields
from bench.memo import recorded_memos
from bench.records import RecordIndex, latest_by_key, read_records
from bench.jobs import Job
from bench.plan import picks_lr, tuning_job, tuning_jobs
from bench.stale import CachedBaselines, at_risk, at_risk_note, on_other_baseline, stale_keys
from bench.tuning import RankedPicks, ranked_picks, replay_borrowed
from bench.train import resolve_device

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunSettings:
    out: Path
    data_dir: Path | None
    download: bool = True
    progress: bool = True
    #: root of the dense-baseline cache (``<root>/checkpoints``); default: ``out``
    checkpoints: Path | None = None

    @property
    def baseline_root(self) -> Path:
        return Path(self.checkpoints if self.checkpoints is not None else self.out)

    def quiet(self, **changes: Any) -> "RunSettings":
        """The settings a worker process or Ray task gets: no progress bars."""
        return replace(self, progress=False, **changes)


PICK_POLL_S = 10.0  # how often a sweep left only with jobs waiting for another sweep's lr pick looks for it
_sleep = time.sleep  # the poll's pause (a test replaces it, not time.sleep for every module)


def records_path(out: Path, suite_name: str, fit_only: bool) -> Path:
    return Path(out) / suite_name / ("fit_runs.jsonl" if fit_only else "runs.jsonl")


def _groups(jobs: list[Job], ordered: bool = False) -> list[list[Job]]:
    """Jobs grouped by dense baseline, so each baseline is trained (or loaded) once.
    ``ordered`` (a suite with a ``priority``): the job order is kept, a group being a run of
    consecutive jobs of one baseline (a baseline met again is loaded from its checkpoint)."""
    if ordered:
        return [list(run) for _, run in itertools.groupby(jobs, key=lambda j: j.baseline_key)]
    by_base: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_base[j.baseline_key].append(j)
    return list(by_base.values())


def planned_skip(job: Job, cost=None) -> dict[str, Any] | None:
    """The ``skipped`` record of a job ruled out before it runs, else None: its method's
    smallest size is more than ``budget_tolerance`` over the budget (layer sizes only, on the
    meta device), or the calibrated factorisation estimate exceeds ``factorize_time_cap_s``.
    A time-capped skip also says when the method's largest size is more than 10 % under the
    budget, so a table shows that the cell could not have been at the budget anyway."""
    if job.reference:
        return None
    capped = bool(job.factorize_time_cap_s) and cost is not None
    sizes = _size_range(job) if job.target_ratio is not None and (job.budget_tolerance or capped) else None
    if job.budget_tolerance and sizes is not None:
        smallest, _, target = sizes
        if smallest > job.budget_tolerance * target:
            return {**job_fields(job), "status": "skipped",
                    "error": f"budget unreachable: the smallest {job.method} has {smallest:,} parameters, "
                             f"{smallest / target:.2f}x the budget of {target:,.0f} (budget_tolerance "
                             f"{job.budget_tolerance:g})"}
    if capped:
        est = cost.factorize_s(job)
        if est is not None and est > job.factorize_time_cap_s:
            short = ""
            if sizes is not None and sizes[1] < sizes[2] / 1.1:
                short = (f"; and its largest size, {sizes[1]:,} parameters, is {sizes[1] / sizes[2]:.2f}x "
                         f"the budget of {sizes[2]:,.0f}")
            return {**job_fields(job), "status": "skipped",
                    "error": f"estimated factorisation time {est:,.0f} s exceeds factorize_time_cap_s "
                             f"{job.factorize_time_cap_s:g} (calibration {_shown(cost.path)}){short}",
                    "time_cap_s": job.factorize_time_cap_s, "estimate_factorize_s": est,
                    "calibration": cost.cal.get("created")}
    return None


def _size_range(job: Job) -> tuple[int, int, float] | None:
    """(smallest, largest, budget) parameter counts of the job's compressed layers at the
    method's first and last knobs, on the meta device; None when the method cannot size them
    (the job itself then says what is wrong)."""
    from bench.layers import dense_params, get_layer
    from bench.registry import get_method
    from bench.meta_network import meta_network

    method = get_method(job.method, **job.options)
    model = meta_network(job.network, job.dataset)
    layers = [get_layer(model, n) for n in job.layers]
    try:
        ends = [(lay, method.knobs(lay)) for lay in layers]
        smallest = sum(method.layer_params(lay, knobs[0]) for lay, knobs in ends)
        largest = sum(method.layer_params(lay, knobs[-1]) for lay, knobs in ends)
    except Exception:  # noqa: BLE001
        return None
    return smallest, largest, sum(dense_params(lay) for lay in layers) / job.target_ratio


def _shown(path) -> str:
    """A path as records show it: relative to the checkout when inside it (a record must not
    carry the temporary worktree it ran from)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except (ValueError, OSError):
        return str(path)


def _reconsidered(jobs: list[Job], records: RecordIndex, cost) -> set[str]:
    """Keys whose latest record is a time-capped skip made under another cap or calibration:
    not done, so they are planned again."""
    redo = set()
    for j in jobs:
        r = records.latest.get(j.key)
        if r and r.get("status") == "skipped" and r.get("time_cap_s") is not None:
            created = cost.cal.get("created") if cost is not None else None
            if j.factorize_time_cap_s != r["time_cap_s"] or created != r.get("calibration"):
                redo.add(j.key)
    return redo


class JobClaimer:
    """Claims a job for this sweep just before it runs (picklable, so workers use it too): False
    when another sweep holds it or has recorded it since this sweep started. A job in ``redo``
    (its record is stale, ``bench.stale``) counts as recorded meanwhile once its latest record
    is another than the one this sweep started from: two sweeps that both found it stale run it
    once, not twice."""

    def __init__(self, claims, records: RecordIndex, rerun: bool, redo: frozenset = frozenset()):
        self.claims, self.records, self.rerun, self.redo = claims, records, rerun, frozenset(redo)
        self.stale_records = {k: records.latest.get(k) for k in self.redo}

    def __call__(self, job: Job) -> bool:
        if not self.claims.try_claim(job.key):
            return False
        if not self.rerun and self._done_meanwhile(job.key):
            self.claims.release(job.key)
            return False
        return True

    def _done_meanwhile(self, key: str) -> bool:
        if not self.records.is_done(key):
            return False
        return key not in self.redo or self.records.latest.get(key) != self.stale_records[key]

    def claimer(self) -> "JobClaimer":
        return self

    def holding(self, job: Job):
        """Context that heartbeats ``job``'s claim while it runs (long jobs stay claimed)."""
        return self.claims.keep_alive([job.key])


def tuning_passes(todo: list[Job], tuners: set[str], ordered: bool = False) -> list[list[Job]]:
    """[jobs that pick their fine-tuning lr, jobs that reuse a pick]: ``tuners`` are the keys
    of the tuning jobs of the whole job list (``bench.plan.tuner_keys``). ``ordered`` (a suite
    with a ``priority``): the two passes are made within each stage, stage after stage, so a
    later stage's tuning jobs do not run before an earlier stage's reusers (a job's tuning job
    is always in its own stage or an earlier one: seed 0 tunes, at the job's own budget)."""
    if ordered:
        stages = [list(run) for _, run in itertools.groupby(todo, key=lambda j: j.stage)]
        return [p for stage in stages for p in tuning_passes(stage, tuners)]
    if not any(picks_lr(j) for j in todo):
        return [todo]
    first = [j for j in todo if not picks_lr(j) or j.key in tuners]
    second = [j for j in todo if j not in first]
    return [p for p in (first, second) if p]


def lr_picks(records: RecordIndex) -> dict[str, list]:
    """Tune key -> the tuning job's picks, best first (``bench.tuning.ranked_picks``: its pick,
    then what a job with ``pick_fallbacks`` falls back on), from the records of tuning jobs (as
    the sweep has them: its own appends are in the index as they land, no re-read)."""
    return _tuning_picks(records.latest.values())


def _tuning_picks(recs) -> dict[str, RankedPicks]:
    """Tune key -> ``ranked_picks`` of each ok tuning record among ``recs`` (the last wins)."""
    picks = {}
    for r in recs:
        t = r.get("lr_tuning")
        if r.get("status") == "ok" and t and t.get("tuned_here") and r.get("tune_key"):
            picks[r["tune_key"]] = ranked_picks(t)
    return picks


def adopt_equal(jobs: list[Job], path: Path, out: Path, suites: list[str], records: RecordIndex | None = None,
                baselines: CachedBaselines | None = None) -> int:
    """Append to ``path`` the copies ``equal_copies`` finds (``records``: the sweep's index of
    ``path``, default: read it); returns how many."""
    records = records if records is not None else RecordIndex(path).refresh()
    copies = equal_copies(jobs, records, out, suites, baselines)
    for copy in copies.values():
        records.append(copy)
    return len(copies)


def equal_copies(jobs: list[Job], records: RecordIndex, out: Path, suites: list[str],
                 baselines: CachedBaselines | None = None) -> dict[str, dict]:
    """Job key -> the record to write instead of running the job, for each job without a record
    in ``records`` yet that an ok/skipped record of an equal job answers:

    - one with the same key in ``out/<suite>/`` for each of ``suites`` (the suite's ``reuse``):
      the same network, baseline, method, budget and recipe, so the same measurement; the copy
      says ``reused_from``;
    - one that measured the same thing under another key (``Job.measurement_key``: NN-BCD at
      another fine-tuning epoch count, which its training ignores), in ``path`` or in those
      suites; the copy says ``same_as`` (and ``reused_from`` when it came from another suite);
    - for a job with ``pick_fallbacks``, the record of the same job made without them, or under
      the ``chance`` rule for a ``half_gain`` job, whose runs this job's rule would have made and
      kept (``_runs_kept_by``; or skipped before fine-tuning). Any other is not taken: that job
      runs, with its fallbacks. The copy says ``same_as``.

    Each copy keeps the measurement and its code version and takes this job's fields. A record
    made on another baseline than the cached checkpoint (``baselines``, ``bench.stale``) is not
    taken: the sweep would run it again anyway. Nothing is written (the dry run asks too)."""
    from bench.memo import reused_record
    from bench.jobs import measurement_key
    from bench.records import is_complete, record_config

    done = records.done()
    wanted = [j for j in jobs if j.key not in done]
    if not wanted:
        return {}
    same_key: dict[str, tuple[dict, str]] = {}
    same_measure: dict[str, tuple[dict, str | None]] = {}
    by_key: dict[str, tuple[dict, str | None]] = {}
    reused: list[dict] = []

    def offer(rec: dict, suite: str | None) -> None:
        if rec.get("status") not in ("ok", "skipped") or not is_complete(rec):
            return
        if suite is not None:
            same_key.setdefault(rec["key"], (rec, suite))
            reused.append(rec)
        same_measure.setdefault(measurement_key(record_config(rec)), (rec, suite))
        by_key.setdefault(rec["key"], (rec, suite))

    for rec in records.latest.values():
        offer(rec, None)
    for name in suites:
        sources = [p for p in (records_path(out, name, False), records_path(out, name, True)) if p.exists()]
        if not sources:
            print(f"note: reuse: no records of suite {name} under {out}; its jobs run here", file=sys.stderr)
        for rec in latest_by_key(r for p in sources for r in read_records(p)).values():
            offer(rec, name)
    ranked = {**_tuning_picks(reused), **lr_picks(records)}  # this suite's own tuning records win
    copies: dict[str, dict] = {}
    for job in wanted:
        if job.key in same_key:
            rec, name = same_key[job.key]
            copy = {**rec, **job_fields(job), "reused_from": name}
        elif job.measurement_key in same_measure and same_measure[job.measurement_key][0]["key"] != job.key:
            rec, name = same_measure[job.measurement_key]
            copy = {**reused_record(job, rec), **({"reused_from": name} if name else {})}
        elif job.pick_fallbacks is not None and (found := _under_earlier_rule(job, by_key, ranked.get(job.tune_key))):
            rec, name = found
            copy = {**reused_record(job, rec), **({"reused_from": name} if name else {})}
        else:
            continue
        if baselines is not None and on_other_baseline(rec, job, baselines):
            continue
        copies[job.key] = {**copy, "tune_key": job.tune_key}
    return copies


def _under_earlier_rule(job: Job, by_key: dict[str, tuple[dict, str | None]], ranked: RankedPicks | None
                        ) -> tuple[dict, str | None] | None:
    """The record (and its suite) of ``job`` made without ``pick_fallbacks`` or under the
    ``chance`` fallback rule that is the run ``job`` would make and keep, if there is one."""
    for key in (replace(job, pick_fallbacks=None, fallback_when=None).key, replace(job, fallback_when=None).key):
        if key != job.key and key in by_key:
            rec, name = by_key[key]
            if rec["status"] == "skipped" or _runs_kept_by(job, rec, ranked):
                return rec, name
    return None


def _runs_kept_by(job: Job, rec: dict, ranked: RankedPicks | None) -> bool:
    """Whether ``job``'s fallback rule, run again, would make exactly the runs ``rec`` made and
    keep the one it kept (``bench.tuning.replay_borrowed``). ``half_gain`` compares with the
    tuning seed's runs (``ranked``): without them, no."""
    rule, chance = job.fallback_when or "chance", chance_accuracy(rec["dataset"])
    if math.isnan(chance) or (rule != "chance" and ranked is None):
        return False
    t = rec.get("lr_tuning") or {}
    tried = t.get("fallbacks") or [{"pick": t.get("pick"), "val_acc": rec.get("acc_val_after_finetune")}]
    candidates = 1 + job.pick_fallbacks if ranked is None else min(1 + job.pick_fallbacks, len(ranked))
    replay = replay_borrowed(tried, candidates, lambda acc, pick: needs_fallback(
        acc, chance, ranked.val_of(pick) if ranked else None, rule))
    return replay == (len(tried), t.get("pick"))


def _stream(groups, settings: RunSettings, devices: list[str], backend: str, address, plugins,
            claimer, picks, gate=None, memos=None, handed: HandedToTrainers | None = None) -> Iterator[Outcome]:
    if backend == "ray":
        from bench.backends.ray import run_ray

        return run_ray(groups, settings, address, plugins, claim=claimer, lr_picks=picks, gate=gate, memos=memos)
    if len(devices) == 1:
        return run_groups(groups, settings, resolve_device(devices[0]), claimer, picks, gate=gate, memos=memos,
                          handed=handed)
    return run_parallel(groups, settings, devices, claimer, picks, plugins, gate=gate, memos=memos)


def run_jobs(jobs: list[Job], settings: RunSettings, devices: list[str], path: Path,
             backend: str = "local", address: str | None = None, plugins: list[str] | None = None,
             rerun: bool = False, claims=None, budget=None, cost=None, ordered: bool = False,
             records: RecordIndex | None = None) -> dict[str, int]:
    """Run the jobs that have no ok/skipped record yet (all of them with ``rerun``); append each
    record as it finishes. Each job is claimed (bench.claims) just before it runs, so concurrent
    sweeps on one output, or machines sharing its filesystem, split the work; ``claims``
    overrides where the claims live (default: ``<records>.claims/`` beside the records).

    ``backend``: "local" (this process, or one worker per device) or "ray" (bench/backends/ray.py).
    ``budget`` (``bench.cost.Budget``): a job is started only if it is estimated to finish in
    the time left, else it is left for later (counted, not recorded); so is a job whose lr
    pick comes from a tuning job left for later. ``cost`` (``bench.cost.CostModel``): applies
    ``factorize_time_cap_s``. ``ordered``: keep the job order (a suite's ``priority``).
    ``records``: an index of ``path`` already read (``adopt_equal`` shares the CLI's)."""
    sweep = Sweep(jobs, settings, path, rerun=rerun, claims=claims, cost=cost, records=records)
    return sweep.run(devices, backend, address, plugins, budget, ordered)


class Sweep:
    """One run of a job list against one records file. It reads the records once
    (``RecordIndex``; then only what is appended), records each result as it comes back
    (stamped with the code version and environment), keeps the counts that must add up to the
    job list, and hands the lr picks of the tuning pass to the pass that reuses them from
    memory."""

    def __init__(self, jobs: list[Job], settings: RunSettings, path: Path, rerun: bool = False, claims=None,
                 cost=None, records: RecordIndex | None = None):
        self.jobs, self.settings, self.path, self.rerun, self.cost = jobs, settings, Path(path), rerun, cost
        self.records = records if records is not None else RecordIndex(path)
        self.records.refresh()
        self.claims = claims if claims is not None else Claims(self.path.parent / f"{self.path.stem}.claims")
        self.by_key = {j.key: j for j in jobs}
        self.counts = {"total": len(jobs), "already_done": 0, "ok": 0, "failed": 0, "skipped": 0, CLAIMED: 0, LEFT: 0,
                       WAITING: 0}
        self.bar = None
        self.version, self.env = "unknown", {}
        self.waiting: set[str] = set()  # keys left WAITING for their tuning job's record

    def run(self, devices: list[str], backend: str = "local", address: str | None = None,
            plugins: list[str] | None = None, budget=None, ordered: bool = False) -> dict[str, int]:
        jobs, counts = self.jobs, self.counts
        done = set() if self.rerun else self.records.done()
        baselines = CachedBaselines(self.settings.baseline_root)
        redo = set() if self.rerun else _reconsidered(jobs, self.records, self.cost)
        stale = set() if self.rerun else stale_keys(jobs, self.records.latest, baselines) & done & set(self.by_key)
        if stale:
            print(f"note: {len(stale)} records were made on another dense baseline than the cached checkpoint, "
                  f"or with a pick their tuning job no longer makes (bench/stale.py): running them again",
                  file=sys.stderr)
        redo |= stale
        done -= redo
        todo = [j for j in jobs if j.key not in done]
        counts["already_done"] = len(jobs) - len(todo)
        if not todo:
            return counts
        if self.cost is None and any(j.factorize_time_cap_s for j in todo):
            print("note: factorize_time_cap_s is not applied: no calibration for this device "
                  "(python -m bench.perf calibrate)", file=sys.stderr)
        self.version, self.env = code_version(), environment()
        risky = [] if self.rerun else at_risk(jobs, self.records.latest, baselines, {j.key for j in todo})
        if risky:
            print(at_risk_note(risky, self.records.latest, self.env), file=sys.stderr)
        claimer = JobClaimer(self.claims, self.records, self.rerun, redo)
        self.bar = tqdm(total=len(todo), desc="jobs", unit="job", disable=not self.settings.progress)
        handed = HandedToTrainers()  # jobs whose baseline another process trains, until it is trained
        run_pass = functools.partial(self._run_pass, devices=devices, backend=backend, address=address,
                                     plugins=plugins, budget=budget, ordered=ordered, baselines=baselines,
                                     handed=handed)
        try:
            run_pass(todo, redo, claimer)
            self._leave_handed(handed)
            self._wait_for_picks(run_pass, redo, claimer)
            again = set() if self.rerun else stale_keys(jobs, self.records.refresh().latest, baselines) & done & set(self.by_key)
            if again:  # a baseline this sweep trained is not the one those records were made on
                print(f"note: {len(again)} records were made on another dense baseline than the one this sweep "
                      f"trained (bench/stale.py): running them again", file=sys.stderr)
                counts["already_done"] -= len(again)
                self.bar.total += len(again)
                redo |= again
                run_pass([j for j in jobs if j.key in again], redo, JobClaimer(self.claims, self.records, False, redo))
                self._leave_handed(handed)
        finally:
            self.claims.release_all_mine()
            self.bar.close()
        finished = (counts["already_done"] + counts["ok"] + counts["failed"] + counts["skipped"] + counts[CLAIMED]
                    + counts[LEFT] + counts[WAITING])
        assert finished == counts["total"], f"job accounting is off: {counts}"
        return counts

    def _wait_for_picks(self, run_pass, redo: set[str], claimer: JobClaimer) -> None:
        """Jobs left ``WAITING`` for an lr pick that another live sweep is making (it holds the
        tuning job's claim): wait for that record (polling every ``PICK_POLL_S``), then run them
        here, so a sweep that finished its share early serves the rest instead of leaving a core
        idle. Jobs whose tuning job no live sweep holds stay waiting, as the summary says."""
        tuner_of = tuning_jobs(self.jobs)
        said = False
        while True:
            held = [k for k in sorted(self.waiting) if self.claims.is_live(tuner_of[self.by_key[k].tune_key])]
            if not held:
                return
            if not said:
                print(f"waiting for the lr picks of {len(held)} jobs, which another sweep is making", file=sys.stderr)
                said = True
            _sleep(PICK_POLL_S)
            latest = self.records.refresh().latest
            ready = [self.by_key[k] for k in held if tuner_of[self.by_key[k].tune_key] in latest]
            if ready:
                self.waiting -= {j.key for j in ready}
                self.counts[WAITING] -= len(ready)
                self.bar.total += len(ready)
                run_pass(ready, redo, claimer)

    def _leave_handed(self, handed: HandedToTrainers) -> None:
        """The jobs still handed to the trainers of their baselines when the passes are done are
        theirs: counted ``CLAIMED``."""
        for job in handed.drain():
            self.finish(Marker(job.key, CLAIMED))

    def _run_pass(self, todo: list[Job], redo: set[str], claimer: JobClaimer, devices, backend, address, plugins,
                  budget, ordered: bool, baselines: CachedBaselines, handed: HandedToTrainers) -> None:
        """Run ``todo``: the jobs the suite rules out are recorded skipped, the tuning jobs run
        before the jobs that reuse their picks, every result is ``finish``ed."""
        jobs = self.jobs
        tuner_of = tuning_jobs(jobs)
        left: set[str] = set()
        runnable = []
        for job in todo:  # ruled out by the suite: recorded skipped without running
            rec = planned_skip(job, self.cost)
            if rec is None:
                runnable.append(job)
            else:
                self.finish(rec if claimer(job) else Marker(job.key, CLAIMED))
        for part in tuning_passes(runnable, set(tuner_of.values()), ordered) if runnable else []:
            waiting = [j for j in part if picks_lr(j) and tuner_of[j.tune_key] in left]
            for job in waiting:  # its lr pick is made by a job left for later: it waits too
                left.add(job.key)
                self.finish(Marker(job.key, LEFT))
            part = [j for j in part if j.key not in left]
            unpicked = _tuner_unrecorded(part, tuner_of, self.records.refresh(), baselines)
            for job in unpicked:  # its tuning job runs in another sweep, or has not run: tuning
                self.finish(Marker(job.key, WAITING))  # here would tune on a reusing seed
            part = [j for j in part if j not in unpicked]
            picks = lr_picks(self.records)
            memos = {} if self.rerun else recorded_memos(jobs, self.records.latest, picks, redo)
            picks = {**picks, **_skipped_tuners(part, tuner_of, self.records, picks)}
            orphaned = _without_pick(part, tuner_of, self.records, picks)
            for job in part:  # never tune on a seed that should reuse seed 0's pick
                if job.key in orphaned:
                    self.finish(failed_record(job, f"the lr pick of its tuning seed is missing: {orphaned[job.key]}"))
            part = [j for j in part if j.key not in orphaned]
            seen: set[str] = set(j.key for j in waiting) | set(orphaned) | {j.key for j in unpicked}
            for rec in _stream(_groups(part, ordered), self.settings, devices, backend, address, plugins,
                               claimer, picks, gate=budget, memos=memos, handed=handed) if part else []:
                seen.add(key_of(rec))
                if isinstance(rec, Marker) and rec.status == HANDED:
                    continue  # not an outcome yet: a later job of this sweep takes it back, or the trainer runs it
                if isinstance(rec, Marker) and rec.status == LEFT:
                    left.add(rec.key)
                self.finish(rec)
            for job in part:  # a backend that lost a job must not make the counts lie
                if job.key not in seen:
                    self.finish(failed_record(job, "no result came back from the backend"))

    def finish(self, rec: Outcome) -> None:
        """Count one result; record it (stamped) unless it is a ``Marker`` (another sweep holds
        the job, or it is left for later)."""
        counts, bar = self.counts, self.bar
        status = rec.status if isinstance(rec, Marker) else rec["status"]
        if not isinstance(rec, Marker):
            job = self.by_key.get(rec["key"])
            if job is not None:
                rec["tune_key"] = job.tune_key
            rec.update(code_version=self.version, env={**self.env, **(rec.get("env") or {})})
            self.records.append(rec)
            self.claims.release(rec["key"])
            if rec["status"] == "failed":
                tqdm.write(f"FAILED {rec['network']}/{rec['dataset']} {rec['label']} {rec['budget']} "
                           f"seed {rec['seed']}: {rec['error']}")
        counts[status] = counts.get(status, 0) + 1
        if status == WAITING:
            self.waiting.add(rec.key)
        finished = sum(counts[k] for k in ("ok", "failed", "skipped", CLAIMED, LEFT, WAITING))
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"],
                        left=bar.total - finished)
        bar.update(1)


def _reusers(part: list[Job], tuner_of: dict[str, str]) -> list[Job]:
    """The jobs of ``part`` that take the lr pick of another job (``bench.plan.tuner_key``)."""
    return [j for j in part if picks_lr(j) and tuner_of[j.tune_key] != j.key]


def _skipped_tuners(part: list[Job], tuner_of: dict[str, str], records: RecordIndex,
                    picks: dict[str, RankedPicks]) -> dict[str, RankedPicks]:
    """An empty pick list for each tune key of ``part`` whose tuning job was recorded skipped (a
    budget its method cannot reach, a layer it does not take) and that ``picks`` lacks: its
    reusers run, are skipped for the same reason, and fail only if they get as far as
    fine-tuning (``bench.tuning.tuned``)."""
    return {j.tune_key: RankedPicks([]) for j in _reusers(part, tuner_of)
            if j.reuses_pick and j.tune_key not in picks
            and records.latest.get(tuner_of[j.tune_key], {}).get("status") == "skipped"}


def _without_pick(part: list[Job], tuner_of: dict[str, str], records: RecordIndex,
                  picks: dict[str, RankedPicks]) -> dict[str, str]:
    """Keys of the jobs that reuse an lr pick whose tuning job is recorded (on the cached baseline)
    but gives none, each with why: it failed, or its record holds no pick."""
    out = {}
    for j in _reusers(part, tuner_of):
        status = records.latest.get(tuner_of[j.tune_key], {}).get("status")
        if status == "failed":
            out[j.key] = "that job failed (run again to retry both)"
        elif j.reuses_pick and j.tune_key not in picks:
            out[j.key] = f"that job's record ({status}) holds none"
    return out


def _tuner_unrecorded(part: list[Job], tuner_of: dict[str, str], records: RecordIndex,
                      baselines: CachedBaselines) -> list[Job]:
    """Jobs that reuse an lr pick whose tuning job has no record yet, or only one made on
    another baseline than the cached one (``bench.stale``): another sweep holds it, or it is not
    in this run (``--set protocol.seeds=[1]`` before seed 0 ran)."""
    return [j for j in _reusers(part, tuner_of)
            if tuner_of[j.tune_key] not in records.latest
            or on_other_baseline(records.latest[tuner_of[j.tune_key]], tuning_job(j), baselines)]
