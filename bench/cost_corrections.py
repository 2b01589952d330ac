"""Corrections of the cost model fitted on what jobs measured: a factor per network, stage and
method that the model multiplies its estimate by (``CostModel.factor``).

Why: the calibration times bare loops (one batch size, the whole network, an n x n layer at
32x); real jobs run the project's loop on a network's suffix with other batch sizes, tune,
calibrate biases and evaluate, and were 1.6-10x off on some stages (issue #20 item 5). The
records already time every stage, so the model learns its error from them instead of gaining a
new approximation per stage.

A factor is the median of measured / estimated over the records of that (network, stage,
method) (median: a record made while another process shared the cores is an outlier, not the
rule); a method without records on a network takes the network's median over all methods, and a
network without records the method's median over all networks.
Only records made on the calibrated processor kind count when the records say theirs
(``env.cpu_model``); older records, which do not, count as this machine's.

Stored in the calibration file as ``corrections: {network | "*": {stage: {method | "*": factor}}}``
with ``corrections_from`` (suites, records, processor, when); ``python -m bench.perf correct``
writes them (``bench/perf/correct.py``).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

#: a method's own factor on a network needs this many records (one record of a method on a
#: network says more about the next than the pooled median of the other methods does)
MIN_RECORDS = 1
#: the pooled factor: over all methods of a network, or (as a network) over all networks
ANY = "*"


def same_processor(record: dict[str, Any], cpu: str | None) -> bool:
    """Whether ``record`` ran on processor ``cpu`` (a record that does not say, or no ``cpu``
    to compare with, counts as the same)."""
    theirs = (record.get("env") or {}).get("cpu_model")
    return not cpu or not theirs or theirs == cpu


def ratios(model, pairs, baselines: dict[str, tuple[Any, float]] | None = None
           ) -> dict[tuple[str, str, str], list[float]]:
    """measured / estimated per (network, stage, method) over ``pairs`` of (job, record, tuned),
    the estimate from ``model`` (which should carry no corrections); ``baselines``: baseline key
    -> (a job of it, measured ``time_train_s``). Stages where either side is 0 say nothing."""
    from bench.cost_records import estimated_as_ran, record_stages

    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for job, rec, tuned in pairs:
        est = estimated_as_ran(model, job, rec, tuned)
        for stage, got in record_stages(rec).items():
            if stage != "baseline" and est[stage] > 0 and got > 0:
                out[(job.network, stage, job.method)].append(got / est[stage])
    for job, got in (baselines or {}).values():
        est = model.baseline_s(job)
        if est > 0 and got > 0:
            out[(job.network, "baseline", ANY)].append(got / est)
    return dict(out)


def pool(samples: dict[tuple[str, str, str], list[float]]) -> dict[tuple[str, str, str], list[float]]:
    """``samples`` (per network, stage, method) with the pools ``fit`` takes medians of added:
    per (network, stage) over all methods (method ``ANY``) and per (stage, method) over all
    networks (network ``ANY``)."""
    pooled: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for (net, stage, method), values in samples.items():
        pooled[(net, stage, method)] += values
        if method != ANY:  # the baseline stage has no method: its samples are already a pool
            pooled[(net, stage, ANY)] += values
            pooled[(ANY, stage, method)] += values
    return dict(pooled)


def fit(samples: dict[tuple[str, str, str], list[float]]) -> dict[str, dict[str, dict[str, float]]]:
    """``corrections`` from ``ratios``: the median of each of its ``pool``s (a method's own on a
    network only with at least ``MIN_RECORDS`` samples)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (net, stage, method), values in sorted(pool(samples).items()):
        if method == ANY or net == ANY or len(values) >= MIN_RECORDS:
            out.setdefault(net, {}).setdefault(stage, {})[method] = round(statistics.median(values), 4)
    return out


def factor(corrections: dict[str, Any] | None, network: str, stage: str, method: str | None) -> float:
    """The factor of one (network, stage, method): the method's own on the network, else the
    network's pooled one, else the method's over all networks, else 1."""
    corrections = corrections or {}
    mine = (corrections.get(network) or {}).get(stage) or {}
    across = (corrections.get(ANY) or {}).get(stage) or {}
    for value in (mine.get(method), mine.get(ANY), across.get(method)):
        if value is not None:
            return float(value)
    return 1.0
