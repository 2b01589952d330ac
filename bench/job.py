"""One job, start to end: compress a copy of the dense baseline, measure, fine-tune, measure,
and return its record. Shared by every backend; knows no backend and writes no file.

The runner never knows which method it runs; a method never knows which suite it is in. The
runner does check what a method claims: each layer's planned ``layer_params`` must equal the
built module's ``module_params``, or the job fails (``ContractError``) instead of recording a
wrong size.
"""
from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from bench.compressor import BudgetUnreachable, ContractError, FinetuneContext
from bench.data import DataSplits
from bench.layers import count_params, dense_params, get_layer
from bench.metrics import fit_errors, forward_flops
from bench.records import config_key
from bench.registry import dataset_spec, get_method
from bench.suite import Job
from bench.train import evaluate, train


def job_fields(job: Job) -> dict[str, Any]:
    """The fields of a record that say which job it is."""
    fields = {"key": job.key, "suite": job.suite, "network": job.network, "dataset": job.dataset,
              "method": job.method, "label": job.label, "options": job.options, "target_ratio": job.target_ratio,
              "budget": job.budget, "seed": job.seed, "layers": job.layers, "fit_only": job.fit_only,
              "train": job.train, "finetune": job.finetune, "data": job.data}
    if job.lr_grid is not None:
        fields["lr_grid"] = job.lr_grid
    if job.borrows_pick:
        fields["tune_epochs"] = job.tune_epochs
    return fields


def memo_key(job: Job, knobs: dict[str, Any], lr_pick: float | None = None) -> str:
    """Jobs of one baseline with equal memo keys would train the same network the same way."""
    return config_key({"method": job.method, "options": job.options, "knobs": knobs, "finetune": job.finetune,
                       "lr_grid": job.lr_grid, "lr_pick": lr_pick, "fit_only": job.fit_only})


def failed_record(job: Job, error: str) -> dict[str, Any]:
    """The record of a job that never reached ``run_job`` (its baseline failed, its worker died)."""
    return {**job_fields(job), "status": "failed", "error": error}


def reused_record(job: Job, earlier: dict[str, Any]) -> dict[str, Any]:
    """``job``'s record made from an identical earlier job's measurements (``same_as``)."""
    return {**earlier, **job_fields(job), "same_as": earlier["key"], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "time_total_s": 0.0}


@dataclass
class Plan:
    """A job planned on an untrained network of its shape: ``knobs`` when the allocation needs
    no trained weights, else None; ``skip_reason`` when the method does not apply."""

    method: Any
    layers: dict[str, torch.nn.Module]
    knobs: dict[str, Any] | None = None
    skip_reason: str | None = None


def plan_on_untrained(job: Job, networks: dict) -> Plan:
    """Plan ``job`` without data or training (dry runs, Ray's reuse of identical allocations).
    ``networks`` caches one untrained network per (network, dataset). Errors of the method's
    ``allocate`` propagate."""
    from bench.models import build_network

    if (job.network, job.dataset) not in networks:
        spec = dataset_spec(job.dataset)
        networks[(job.network, job.dataset)] = build_network(job.network, spec.shape, spec.classes)
    model = networks[(job.network, job.dataset)]
    method = get_method(job.method, **job.options)
    layers = {n: get_layer(model, n) for n in job.layers}
    plan = Plan(method, layers, skip_reason=method.skip_reason(model, job.layers))
    if plan.skip_reason is None and (job.knob is not None or not method.allocation_uses_weights):
        plan.knobs = ({n: job.knob for n in layers} if job.knob is not None
                      else method.allocate(layers, job.target_ratio))
    return plan


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


def _finetune(method, model, job: Job, data: DataSplits, originals, knobs, lr: float | None,
              progress: bool) -> FinetuneContext:
    """Run the method's fine-tuning on ``model`` in place with the suite's recipe (``lr``
    replacing its learning rate when tuning); the method sees train/validation data only."""
    recipe = job.finetune if lr is None else {**job.finetune, "lr": lr}
    view = data.train_val()
    ctx = FinetuneContext(
        train=lambda m, epochs=None: train(m, view, recipe, seed=job.seed, epochs=epochs,
                                           desc=f"finetune {job.label} {job.budget}", progress=progress),
        epochs=recipe["epochs"], layer_names=list(job.layers), dense_layers=originals,
        knobs=knobs, method=method, data=view, device=data.x_train.device)
    method.finetune(model, ctx)
    return ctx


def _tuned_finetune(method, model, job: Job, data: DataSplits, originals, knobs, lr_pick: float | None,
                    progress: bool) -> tuple[torch.nn.Module, FinetuneContext, dict | None]:
    """Fine-tune, picking the learning rate from ``job.lr_grid`` by validation accuracy when this
    job tunes (``lr_pick`` None), or with the pick made on the tuning seed. Returns the model,
    the context of the kept run and what the record says of the tuning (None: not tuned)."""
    grid = job.lr_grid
    if not grid or not method.uses_finetune_lr:
        return model, _finetune(method, model, job, data, originals, knobs, None, progress), None
    if lr_pick is not None:
        ctx = _finetune(method, model, job, data, originals, knobs, lr_pick, progress)
        return model, ctx, {"grid": list(grid), "pick": lr_pick, "tuned_here": False}
    best = None
    val_acc: dict[str, float] = {}
    diverged: list[float] = []
    for lr in grid:
        trial = copy.deepcopy(model)
        try:
            ctx = _finetune(method, trial, job, data, originals, knobs, float(lr), progress)
        except FloatingPointError:  # this lr diverges: a grid value that loses, not a failed job
            diverged.append(float(lr))
            continue
        acc = evaluate(trial, data.x_val, data.y_val)
        val_acc[repr(float(lr))] = acc
        if best is None or acc > best[0]:  # ties: the first (smallest) lr of the grid
            best = (acc, float(lr), trial, ctx)
    if best is None:
        raise FloatingPointError(f"fine-tuning diverged at every lr of the grid {list(grid)}")
    _, lr, trial, ctx = best
    if diverged:
        return trial, ctx, {"grid": list(grid), "pick": lr, "val_acc": val_acc, "diverged": diverged,
                            "tuned_here": True}
    return trial, ctx, {"grid": list(grid), "pick": lr, "val_acc": val_acc, "tuned_here": True}


def run_job(job: Job, base_model: torch.nn.Module, base_meta: dict, data: DataSplits,
            progress: bool = True, memo: dict | None = None, lr_pick: float | None = None) -> dict[str, Any]:
    """One job's record. Never raises for a method's failure: the record says ``failed``.

    ``memo`` maps (method, options, knobs, recipe) to an earlier record of the same baseline: a
    budget whose allocation equals an earlier one (a ratio beyond what a method can reach)
    reuses its measurements instead of training the same network again, and says so
    (``same_as``). ``lr_pick``: the fine-tuning learning rate picked on the tuning seed (jobs
    with an ``lr_grid``); None makes this job tune."""
    device = data.x_train.device
    rec: dict[str, Any] = {
        **job_fields(job), "data_fingerprint": data.fingerprint, "data_source": data.source, "data_warnings": data.warnings,
        "acc_dense": base_meta["acc_test"], "acc_dense_val": base_meta.get("acc_val"),
        "baseline_fingerprint": base_meta.get("weights_fingerprint"), "status": "ok", "error": None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t_start = time.perf_counter()
    mkey = None
    try:
        method = get_method(job.method, **job.options)
        model = copy.deepcopy(base_model)
        originals = {n: copy.deepcopy(get_layer(model, n)) for n in job.layers}
        reason = method.skip_reason(model, job.layers)
        if reason:
            rec.update(status="skipped", error=reason)
            return rec
        try:
            knobs = ({n: job.knob for n in job.layers} if job.knob is not None
                     else method.allocate(originals, job.target_ratio))
        except BudgetUnreachable as e:
            rec.update(status="skipped", error=f"budget unreachable: {e}")
            return rec
        mkey = memo_key(job, knobs, lr_pick)
        if memo is not None and mkey in memo:
            return reused_record(job, memo[mkey])
        t0 = time.perf_counter()
        info = method.compress(model, knobs)
        rec["time_compress_s"] = time.perf_counter() - t0
        check_sizes(method, originals, model, knobs, "after compress")
        fit, fit_per_layer = fit_errors(originals, {n: get_layer(model, n) for n in job.layers})
        rec.update(fit_rel_error=fit, knobs=knobs, params_counted_as=method.params_counted_as)
        if not job.fit_only:
            rec["acc_before_finetune"] = evaluate(model, data.x_test, data.y_test)
            t0 = time.perf_counter()
            model, ctx, tuning = _tuned_finetune(method, model, job, data, originals, knobs, lr_pick, progress)
            rec["time_finetune_s"] = time.perf_counter() - t0
            check_sizes(method, originals, model, knobs, "after fine-tuning")
            rec["acc_after_finetune"] = evaluate(model, data.x_test, data.y_test)
            rec["acc_val_after_finetune"] = evaluate(model, data.x_val, data.y_val)
            rec["extras"] = ctx.extras
            if tuning is not None:
                rec["lr_tuning"] = tuning
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
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=6)[-3000:])
    finally:
        rec["time_total_s"] = time.perf_counter() - t_start
    if memo is not None and rec["status"] == "ok" and mkey is not None:
        memo[mkey] = rec
    return rec
