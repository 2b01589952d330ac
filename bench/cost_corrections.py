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
network without records the method's median over all networks. Finest of all, a job whose
``cell`` (the same layers, method entry, budget and recipe, any seed or epoch count) has
records takes their median: a compressed layer's speed depends on its knob and layout (svd's
thin factors train 5x faster than its model says, tucker-paired's rebuilt weight 2x slower;
tt's x1024 cell 4x slower than its x2192 one), so a cell's seed 0 predicts its seeds 1 and 2
better than any pool of other cells does.
Only records made on the calibrated processor kind with the calibration's thread count count
when the records say theirs (``env.cpu_model``, ``env.cpu_id``, ``env.threads``); older records,
which do not, count as this machine's.

Stored in the calibration file as ``corrections_sets``, one set per processor and thread count
(sessions land on different machines, and two 1-thread sweeps side by side run each job slower
than the calibration's 2 threads): ``{"cpu_model", "cpu_id", "threads", "suites", "records", "created",
"corrections": {network | "*": {stage: {method | "*": factor}}}}``. ``python -m bench.perf
correct`` writes the set of the records it fits (``bench/perf/correct.py``); for each network the
model takes the set of the machine and thread count it estimates for, else the nearest set with
records of that network (``ranked``, ``for_network``). A file's top-level
``corrections`` (with ``corrections_from``), as files written before the sets have, is used as
given.
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
#: the prefix of a cell's entry among the methods of a (network, stage)
CELL = "cell:"
#: the calibration file's key of its correction sets
SETS = "corrections_sets"


def legacy_set(cal: dict[str, Any]) -> dict[str, Any] | None:
    """A file's top-level ``corrections`` (with ``corrections_from``, as files written before the
    sets have) in ``SETS``' format; None when it has none."""
    if not cal.get("corrections"):
        return None
    src = cal.get("corrections_from") or {}
    return {**src, "threads": src.get("threads", cal.get("threads")), "corrections": cal["corrections"]}


def ranked(cal: dict[str, Any], cpu: str | None, threads: int | None,
           cpu_id: str | None = None) -> list[dict[str, Any]]:
    """The correction sets (``SETS``' format) an estimate for processor ``cpu`` (``cpu_id``:
    family, model; ``bench.environment.cpu_id``) with ``threads`` may use, best first: the
    file's top-level ``corrections`` alone when it has them; else its sets, the one fitted on
    that processor kind with that thread count first, then that kind's others, then sets of the
    same model name on another kind (two "AMD EPYC" generations ran LeNet-5 jobs 2x apart), then
    the rest by number of records. A set that does not say its ``cpu_id`` (written before they
    did) counts as the same kind, after one that says so. A network takes the first set that
    has records of it (``CostModel.factor``): LeNet-5's factors say nothing of VGG-16's
    2^24-weight layers."""
    given = legacy_set(cal)
    if given:
        return [given]
    sets = [s for s in cal.get(SETS) or [] if s.get("corrections")]

    def order(s):
        kind = same_kind(s, cpu, cpu_id)
        return (not (kind and s.get("threads") == threads), not kind, not (cpu_id and s.get("cpu_id") == cpu_id),
                s.get("cpu_model") != cpu, -(s.get("records") or 0))
    return sorted(sets, key=order)


def same_kind(correction_set: dict[str, Any], cpu: str | None, cpu_id: str | None) -> bool:
    """Whether a set was fitted on processor model ``cpu`` of kind ``cpu_id`` (a set or an
    estimate that does not say its id: the model name decides)."""
    theirs = correction_set.get("cpu_id")
    return correction_set.get("cpu_model") == cpu and (not cpu_id or not theirs or theirs == cpu_id)


def for_network(sets: list[dict[str, Any]], network: str) -> dict[str, Any] | None:
    """The first of ``ranked`` sets with records of ``network``, else the first (whose factors
    pooled over networks then stand in), else None."""
    return next((s for s in sets if network in s["corrections"]), sets[0] if sets else None)


def set_said(sets: list[dict[str, Any]], networks, cpu: str | None, threads: int | None,
             cpu_id: str | None = None) -> str:
    """Whose corrections the estimates of ``networks`` use, and whether they are this machine's
    (for the dry run's header)."""
    if not sets:
        return "no corrections fitted on records (python -m bench.perf correct)"
    said = []
    for chosen, nets in _grouped(sets, networks):
        kind = same_kind(chosen, cpu, cpu_id) and bool(chosen.get("cpu_id")) == bool(cpu_id)
        whose = ("" if kind and chosen.get("threads") == threads else " (this processor, other threads)" if kind
                 else " (not this run's processor: python -m bench.perf correct fits a set on its records)")
        said.append(f"{', '.join(nets)} corrected on {chosen.get('records')} records of "
                    f"{', '.join(chosen.get('suites') or [])} made on {chosen.get('cpu_model')}"
                    f"{' (' + chosen['cpu_id'] + ')' if chosen.get('cpu_id') else ''}, "
                    f"{chosen.get('threads')} thread(s)" + whose)
    return "; ".join(said)


def _grouped(sets, networks):
    groups: dict[int, tuple[dict, list[str]]] = {}
    for net in networks:
        chosen = for_network(sets, net)
        groups.setdefault(id(chosen), (chosen, []))[1].append(net)
    return list(groups.values())


def cell(job) -> str:
    """``CELL`` + a hash of what decides a job's speed per trial and epoch: its config without
    the seed, the epoch counts and the picked optimizer and lr (the model counts trials and
    epochs itself)."""
    from bench.records import config_key

    cfg = {k: v for k, v in job.config().items() if k not in ("seed", "tune_epochs")}
    if cfg.get("finetune"):
        cfg["finetune"] = {k: v for k, v in cfg["finetune"].items() if k not in ("epochs", "lr", "optimizer")}
    return CELL + config_key(cfg)


def same_processor(record: dict[str, Any], cpu: str | None, threads: int | None = None,
                   cpu_id: str | None = None) -> bool:
    """Whether ``record`` ran on processor ``cpu`` (of kind ``cpu_id`` where both say it) with
    the calibration's ``threads`` (a record that does not say, or nothing to compare with,
    counts as the same): a job run on 1 thread beside another sweep is no sample of the
    2-thread speed the calibration estimates."""
    env = record.get("env") or {}
    theirs, their_threads, their_id = env.get("cpu_model"), env.get("threads"), env.get("cpu_id")
    return ((not cpu or not theirs or theirs == cpu) and (not threads or not their_threads or their_threads == threads)
            and (not cpu_id or not their_id or their_id == cpu_id))


def pool(samples: dict[tuple[str, str, str], list[float]]) -> dict[tuple[str, str, str], list[float]]:
    """``samples`` (per network, stage, method) with the pools ``fit`` takes medians of added:
    per (network, stage) over all methods (method ``ANY``) and per (stage, method) over all
    networks (network ``ANY``)."""
    pooled: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for (net, stage, method), values in samples.items():
        pooled[(net, stage, method)] += values
        if method != ANY and not method.startswith(CELL):  # the baseline stage has no method: its
            # samples are already a pool; a cell's are its method's too
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


def factor(corrections: dict[str, Any] | None, network: str, stage: str, method: str | None,
           cell_id: str | None = None) -> float:
    """The factor of one (network, stage, method): the job's cell's (``cell_id``, ``cell``) when
    it has records, else the method's own on the network, else the network's pooled one, else
    the method's over all networks, else 1."""
    corrections = corrections or {}
    mine = (corrections.get(network) or {}).get(stage) or {}
    across = (corrections.get(ANY) or {}).get(stage) or {}
    for value in (mine.get(cell_id) if cell_id else None, mine.get(method), mine.get(ANY), across.get(method)):
        if value is not None:
            return float(value)
    return 1.0
