"""One job, start to end: compress a copy of the dense baseline, measure, fine-tune, measure,
and return its record. Shared by every backend; knows no backend and writes no file.

The runner never knows which method it runs; a method never knows which suite it is in. The
runner does check what a method claims: each layer's planned ``layer_params`` must equal the
built module's ``module_params``, or the job fails (``ContractError``) instead of recording a
wrong size.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import signal
import threading
import time
import traceback
from typing import Any, Callable

import torch

from bench.baseline import weights_fingerprint
from bench.bias_calibration import calibrate, calibration_images
from bench.chance import needs_fallback
from bench.compressor import BudgetUnreachable, ContractError, FinetuneContext
from bench.data import DataSplits
from bench.layers import count_params, dense_params, get_layer
from bench.metrics import fit_errors, forward_flops
from bench.prefix import Cut, build_cache, cut, first_layer
from bench.prefix_store import PrefixStore
from bench.start_store import StartStore
from bench.trial_journal import TrialJournal, TrialJournals, TrialsLeftForLater, resumed_seconds
from bench.registry import get_method
from bench.jobs import Job, job_fields
from bench.memo import memo_key, reused_record
from bench.train import evaluate, train
from bench.tuning import apply_pick, pick_label, tuned


def failed_record(job: Job, error: str) -> dict[str, Any]:
    """The record of a job that never reached ``run_job`` (its baseline failed, its worker died)."""
    return {**job_fields(job), "status": "failed", "error": error}


def check_sizes(method, originals: dict[str, torch.nn.Module], model: torch.nn.Module,
                knobs: dict[str, Any], when: str) -> None:
    """Planned ``layer_params`` == built ``module_params`` for every layer, or ContractError."""
    for name, layer in originals.items():
        planned = method.layer_params(layer, knobs[name])
        built = method.module_params(get_layer(model, name))
        if planned != built:
            raise ContractError(
                f"{method.name}: layer {name} has {built:,} parameters {when} but layer_params "
                f"said {planned:,} (does the module keep a reference to the dense layer?)")


class JobTimeout(Exception):
    """A job ran past its ``job_time_limit_s``; recorded failed with this message."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise ``JobTimeout`` in this thread after ``seconds`` (SIGALRM; the main thread only, where
    Python delivers signals: elsewhere no limit is set). Torch ops return between bytecodes, so
    a limit hit inside one long kernel stops the job when that kernel returns."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise JobTimeout(f"stopped after the job time limit of {seconds:g} s (suite key job_time_limit_s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_finite(model: torch.nn.Module, layers, when: str) -> None:
    """Every parameter and buffer of the compressed layers is finite, or ContractError naming
    the first bad one: a plugin's NaN weights must not be recorded ok (with no fine-tuning, or
    ``--fit-only``, nothing else would notice)."""
    for name in layers:
        layer = get_layer(model, name)
        for pname, t in [*layer.named_parameters(), *layer.named_buffers()]:
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ContractError(f"layer {name}: non-finite values in {pname} {when}")


def _finetune(method, model, job: Job, data, originals, knobs, pick, progress: bool,
              calibrate=None, journal: TrialJournal | None = None) -> FinetuneContext:
    """Run the method's fine-tuning on ``model`` in place with the suite's recipe (``pick``, an
    lr or an optimizer and lr, replacing the recipe's when tuning); the method sees train and
    validation data only. ``calibrate(model, names)``: the job's bias calibration, for layers
    the method replaces while it fine-tunes (the method records what it returns). ``journal``:
    where each training run keeps its state between epochs (a killed run goes on from there)."""
    recipe = apply_pick(job.finetune, pick)
    view = data.train_val()
    label, calls = pick_label(pick), itertools.count()

    def run(m, epochs=None):
        kept = {}
        if journal is not None:
            kept = dict(state_path=journal.run_state(label, next(calls)),
                        state_start=weights_fingerprint(m.state_dict()))
        summary = train(m, view, recipe, seed=job.seed, epochs=epochs, desc=f"finetune {job.label} {job.budget}",
                        progress=progress, **kept)
        if journal is not None and summary.get("resumed_s"):
            journal.note_resumed(label, summary["resumed_s"])
        return summary

    ctx = FinetuneContext(
        train=run,
        epochs=recipe["epochs"], layer_names=list(job.layers), dense_layers=originals,
        knobs=knobs, method=method, data=view, device=data.x_train.device)
    if calibrate is not None:
        ctx.calibrate = calibrate
    method.finetune(model, ctx)
    return ctx


def _tuned_finetune(method, model, job: Job, data, originals, knobs, lr_pick, progress: bool, calibrate=None,
                    journal=None):
    """Fine-tune, picking the optimizer and lr (``bench.tuning``) on the validation split when
    this job tunes (``lr_pick`` None; its finished trials kept in ``journal``), or with the pick
    made on the tuning seed (``journal`` then keeps the runs' epoch states only). Returns the
    model, the context of the kept run and the record's ``lr_tuning`` (None: not tuned)."""
    grid = job.lr_grid if method.uses_finetune_lr else None
    return tuned(lambda m, pick: _finetune(method, m, job, data, originals, knobs, pick, progress, calibrate,
                                           journal),
                 lambda m: evaluate(m, data.x_val, data.y_val), model, grid, job.optimizer_grid,
                 job.lr_extend or 0, lr_pick, fallbacks=job.pick_fallbacks or 0,
                 collapsed=lambda acc, pick: needs_fallback(acc, 100.0 / data.num_classes, _reference(lr_pick, pick),
                                                            job.fallback_when or "chance"),
                 journal=journal if grid and lr_pick is None else None)


def _reference(ranked, pick) -> float | None:
    """The tuning seed's validation accuracy with ``pick`` (``bench.tuning.RankedPicks``), if known."""
    return ranked.val_of(pick) if hasattr(ranked, "val_of") else None


def _scoped(job: Job, method, base_model, base_meta: dict, data: DataSplits, caches: PrefixStore | None
            ) -> tuple[Any, str | None, float, str | None]:
    """(data the job trains and evaluates on, layer the network is cut before or None, seconds
    spent getting its frozen-prefix cache, where it came from: ``bench.prefix_store``). ``caches``
    holds the group baseline's cache (None: build one for this job alone); a method that does
    not fine-tune (dense) needs none."""
    ft = job.finetune or {}
    if job.fit_only or ft.get("scope", "all") == "all" or not method.finetunes:
        return data, None, 0.0, None
    views, precision = int(ft.get("cache_views", 4)), ft.get("precision")
    first = first_layer(base_model, job.layers, data.x_val[:1])
    cache, seconds, source = (caches if caches is not None else PrefixStore()).get(
        job, base_meta, first, data, views, precision,
        lambda: build_cache(base_model, first, data, seed=job.seed, views=views, precision=precision))
    return cache.splits, first, seconds, source


def _calibrate(model, base_model, job: Job, data, cut_at: str | None, names=None) -> dict[str, Any]:
    """Bias calibration (``bench.bias_calibration``) of ``names`` (default: the job's layers) on
    the job's training inputs, with the dense baseline cut the same way as the job's model."""
    x = calibration_images(data.x_train, job.seed)
    with cut(base_model, cut_at) if cut_at else contextlib.nullcontext():
        return calibrate(model, base_model, list(names or job.layers), x)


def _measure_and_finetune(rec, method, model, base_model, base_meta: dict, job: Job, data: DataSplits, originals,
                          knobs, lr_pick, progress: bool, prefix_caches: PrefixStore | None, journal=None):
    """Accuracy after compression, bias calibration (when the recipe asks), tuned fine-tuning
    and accuracy after it, on the whole network or after its frozen prefix; fills ``rec`` and
    returns the fine-tuned model (whole)."""
    run_data, cut_at, cache_s, cache_from = _scoped(job, method, base_model, base_meta, data, prefix_caches)
    if cut_at:
        rec.update(finetune_cut_before=cut_at, time_prefix_cache_s=cache_s, prefix_cache_from=cache_from)
    swap = Cut(model, cut_at) if cut_at else None
    try:
        rec["acc_before_finetune"] = evaluate(model, run_data.x_test, run_data.y_test)
        if job.calibrates_bias:
            rec["acc_before_calibration"] = rec["acc_before_finetune"]
            rec["acc_val_before_calibration"] = evaluate(model, run_data.x_val, run_data.y_val)
            rec["bias_calibration"] = _calibrate(model, base_model, job, run_data, cut_at)
            rec["acc_before_finetune"] = evaluate(model, run_data.x_test, run_data.y_test)
            rec["acc_val_after_calibration"] = evaluate(model, run_data.x_val, run_data.y_val)
        t0 = time.perf_counter()
        recalibrate = ((lambda m, names: _calibrate(m, base_model, job, run_data, cut_at, names))
                       if job.calibrates_bias else None)
        model, ctx, tuning = _tuned_finetune(method, model, job, run_data, originals, knobs, lr_pick, progress,
                                             recalibrate, journal)
        # trials and epochs a killed sweep finished (``bench.trial_journal``) cost their time then, not now
        resumed_epochs_s = sum(journal.resumed_epochs_s.values()) if journal is not None else 0.0
        if resumed_epochs_s:
            rec["time_resumed_epochs_s"] = resumed_epochs_s
        rec["time_finetune_s"] = time.perf_counter() - t0 + resumed_seconds(tuning) + resumed_epochs_s
        check_sizes(method, originals, model, knobs, "after fine-tuning")
        check_finite(model, job.layers, "after fine-tuning")
        rec["acc_after_finetune"] = evaluate(model, run_data.x_test, run_data.y_test)
        rec["acc_val_after_finetune"] = evaluate(model, run_data.x_val, run_data.y_val)
        rec["extras"] = ctx.extras
        if tuning is not None:
            rec["lr_tuning"] = tuning
    finally:
        if swap is not None:
            swap.restore(model)
    return model


def _compressed(method, model, job: Job, knobs, base_meta: dict, starts: StartStore | None,
                device) -> tuple[dict, float, bool]:
    """Compress ``model`` in place: (per-layer info, seconds the compression took, whether the
    start was loaded from ``starts`` instead, its seconds then those of when it was made). A
    method that builds skeletons (``Compressor.skeleton``) has a fresh start kept there."""
    key = (starts.key(job, method, knobs, base_meta.get("weights_fingerprint"), device)
           if starts is not None and method.caches_start else None)
    loaded = starts.load(key, model, method, knobs) if key is not None else None
    if loaded is not None:
        return *loaded, True
    t0 = time.perf_counter()
    info = method.compress(model, knobs)
    seconds = time.perf_counter() - t0
    if key is not None:
        starts.keep(key, model, list(knobs), info, seconds, job.label)
    return info, seconds, False


def run_job(job: Job, base_model: torch.nn.Module, base_meta: dict, data: DataSplits,
            progress: bool = True, memo: dict | None = None, lr_pick=None,
            prefix_caches: PrefixStore | None = None, journals: TrialJournals | None = None,
            starts: StartStore | None = None, trial_room: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One job's record. Never raises for a method's failure: the record says ``failed``.

    ``memo`` maps (method, options, knobs, recipe) to an earlier record of the same baseline: a
    budget whose allocation equals an earlier one (a ratio beyond what a method can reach)
    reuses its measurements instead of training the same network again, and says so
    (``same_as``). ``lr_pick``: the fine-tuning pick made on the tuning seed (jobs with an
    ``lr_grid``), or its picks best first (``bench.tuning.ranked_picks``: the job's
    ``pick_fallbacks`` fall back on them); None makes this job tune. ``prefix_caches``: where the jobs of one
    baseline keep its frozen-prefix cache (``finetune.scope: after_frozen_prefix``;
    ``bench.prefix_store``), None: built for this job alone. ``journals``: where a tuning job
    keeps its finished trials, and every job its fine-tuning runs' epoch states
    (``bench.trial_journal``), None: nowhere; ``trial_room``, asked before
    each of its trials, False stops the job with ``TrialsLeftForLater`` (no record; the time
    budget). ``starts``: where a method that says ``caches_start`` keeps and finds compressed
    starts (``bench.start_store``)."""
    device = data.x_train.device
    may_tune = journals is not None and lr_pick is None and bool(job.lr_grid) and not job.fit_only
    journal = (journals.for_job(job.key, base_meta.get("weights_fingerprint"), trial_room if may_tune else None)
               if journals is not None and not job.fit_only else None)
    rec: dict[str, Any] = {
        **job_fields(job), "data_fingerprint": data.fingerprint, "data_source": data.source, "data_warnings": data.warnings,
        "acc_dense": base_meta["acc_test"], "acc_dense_val": base_meta.get("acc_val"),
        "baseline_fingerprint": base_meta.get("weights_fingerprint"), "status": "ok", "error": None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t_start = time.perf_counter()
    mkey = None
    try:
        with time_limit(job.job_time_limit_s):  # the baseline is not counted
            method = get_method(job.method, **job.options)
            model = copy.deepcopy(base_model)
            originals = {n: copy.deepcopy(get_layer(model, n)) for n in job.layers}
            reason = method.skip_reason(model, job.layers)
            if reason:
                rec.update(status="skipped", error=reason)
                return rec
            t0 = time.perf_counter()
            try:
                knobs = ({n: job.knob for n in job.layers} if job.knob is not None
                         else method.allocate(originals, job.target_ratio))
            except BudgetUnreachable as e:
                rec.update(status="skipped", error=f"budget unreachable: {e}")
                return rec
            rec["time_allocate_s"] = time.perf_counter() - t0  # min-max scores factorisations: minutes for CP
            mkey = memo_key(job, knobs, lr_pick)
            if memo is not None and mkey in memo:
                return reused_record(job, memo[mkey])
            t0 = time.perf_counter()
            info, rec["time_compress_s"], loaded = _compressed(method, model, job, knobs, base_meta, starts, device)
            if loaded:  # time_compress_s was measured when the start was made: a cost of the method all the same
                rec["start_from_cache"] = {"seconds_to_load": time.perf_counter() - t0}
            check_sizes(method, originals, model, knobs, "after compress")
            check_finite(model, job.layers, "after compress")
            fit, fit_per_layer = fit_errors(originals, {n: get_layer(model, n) for n in job.layers})
            rec.update(fit_rel_error=fit, knobs=knobs, params_counted_as=method.params_counted_as)
            if not job.fit_only:
                model = _measure_and_finetune(rec, method, model, base_model, base_meta, job, data, originals, knobs, lr_pick,
                                              progress, prefix_caches, journal)
            final = {n: get_layer(model, n) for n in job.layers}
            per_layer = {}
            for n in job.layers:
                per_layer[n] = {"knob": knobs[n], "params_dense": dense_params(originals[n]),
                                "params": method.module_params(final[n]), "fit_rel_error": fit_per_layer[n],
                                **info.get(n, {})}
            params_dense = sum(v["params_dense"] for v in per_layer.values())
            params_comp = sum(v["params"] for v in per_layer.values())
            rest = count_params(model) - sum(count_params(m) for m in final.values())
            rec.update(layer_info=per_layer, params_dense_layers=params_dense, params_compressed_layers=params_comp,
                       achieved_ratio=params_dense / params_comp if params_comp else float("inf"),
                       params_total=rest + params_comp, params_total_dense=count_params(base_model),
                       flops=forward_flops(model, data.input_shape, device),
                       flops_dense=forward_flops(base_model, data.input_shape, device))
    except TrialsLeftForLater:
        raise  # not a result: the job is left for a later run, its trials kept
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=6)[-3000:])
    finally:
        rec["time_total_s"] = (time.perf_counter() - t_start + resumed_seconds(rec.get("lr_tuning"))
                               + rec.get("time_resumed_epochs_s", 0.0)
                               + (rec["time_compress_s"] if rec.get("start_from_cache") else 0.0))
    if journal is not None and rec["status"] in ("ok", "skipped"):
        journal.clear()  # recorded: its trials are in the record now, its runs are done
    if memo is not None and rec["status"] == "ok" and mkey is not None:
        memo[mkey] = rec
    return rec
