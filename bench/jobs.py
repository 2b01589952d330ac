"""A suite expanded into jobs: one ``Job`` per network x dataset x method entry x budget x
seed (x fine-tuning epochs, when the suite lists ``finetune_epochs``). A job's key is the hash
of its ``config``: what determines its result, nothing about how it is scheduled."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

from bench.allocation import MINMAX_RULE
from bench.bias_calibration import CALIBRATION_RULE
from bench.plan import TUNE_SEED, picks_lr
from bench.records import config_key
from bench.registry import METHODS, is_reference
from bench.spec import MethodEntry, Suite, thaw
from bench.suite_schema import DEFAULT_JOB_TIME_LIMIT_S, STAGES, SuiteError
from bench.train import check_recipe

#: the config field naming the min-max allocation rule a job ran under (in its key)
ALLOCATION_RULE_FIELD = "minmax_rule"
#: config fields that act on a result only through the knobs they resolve to: the budget and the
#: rule that splits it (``bench.memo.memo_key`` puts the knobs in their place)
BUDGET_FIELDS = ("target_ratio", "knob", ALLOCATION_RULE_FIELD)


@dataclass(frozen=True)
class Job:
    """One job, frozen: its ``key`` (the hash of ``config``), ``baseline_key`` and ``tune_key``
    are computed once; the planner gives it its ``stage`` by building a copy
    (``dataclasses.replace``), which does not change the key."""

    suite: str
    network: str
    dataset: str
    layers: list[str]
    method: str
    label: str
    options: dict[str, Any]
    target_ratio: float | None
    knob: Any
    seed: int
    train: dict[str, Any]
    finetune: dict[str, Any]
    data: dict[str, Any]
    fit_only: bool = False
    #: fine-tuning learning rates the method's lr is picked from (the suite's ``lr_grid``), the
    #: optimizers crossed with them (``optimizer_grid``) and the edge extensions (``lr_extend``);
    #: the last two are in the key only when set
    lr_grid: list[float] | None = None
    optimizer_grid: list[str] | None = None
    lr_extend: int | None = None
    #: the suite's ``pick_fallbacks``: how many of the tuning seed's next-best picks a job that
    #: borrows its pick tries when its run diverges or ends at chance (``bench.tuning.borrowed``);
    #: in the key of the borrowing jobs only (the tuning job has nothing to fall back on)
    pick_fallbacks: int | None = None
    #: the suite's ``fallback_when`` (``bench.chance.FALLBACK_RULES``) when not the default
    #: ``chance``: in the key of the jobs that carry ``pick_fallbacks``, beside it
    fallback_when: str | None = None
    #: not part of the key (how a job is scheduled or capped, not what it computes):
    #: its priority stage (``STAGES``), the suite's budget_tolerance and factorize_time_cap_s
    stage: str | None = field(default=None, compare=False)
    budget_tolerance: float | None = field(default=None, compare=False)
    factorize_time_cap_s: float | None = field(default=None, compare=False)
    job_time_limit_s: float = field(default=DEFAULT_JOB_TIME_LIMIT_S, compare=False)
    #: the suite's ``tune_epochs``: a job of another epoch count takes the lr picked at this one
    #: (in the key only when it differs from the job's own epoch count, whose result it then changes)
    tune_epochs: float | None = None
    key: str = field(default="", init=False)

    def config(self) -> dict[str, Any]:
        """Everything that determines the result (and so the record key). A fit-only job never
        fine-tunes, so its key leaves the fine-tuning recipe out; ``lr_grid`` is there only when
        set, so the keys of suites without one are those of the records made before it existed."""
        cfg = {"network": self.network, "dataset": self.dataset, "layers": self.layers,
               "method": self.method, "options": self.options, "target_ratio": self.target_ratio,
               "knob": self.knob, "seed": self.seed, "train": self.train,
               "finetune": None if self.fit_only else self.finetune, "data": self.data, "fit_only": self.fit_only}
        if self.lr_grid is not None:
            cfg["lr_grid"] = self.lr_grid
        if self.optimizer_grid is not None:
            cfg["optimizer_grid"] = self.optimizer_grid
        if self.lr_extend is not None:
            cfg["lr_extend"] = self.lr_extend
        if self.borrows_pick:
            cfg["tune_epochs"] = self.tune_epochs
        if self.pick_fallbacks is not None and self.reuses_pick:
            cfg["pick_fallbacks"] = self.pick_fallbacks
            if self.fallback_when is not None:
                cfg["fallback_when"] = self.fallback_when
        if self.calibrates_bias:  # a new rule gives new results: records of the old one stay apart
            cfg["bias_calibration_rule"] = CALIBRATION_RULE
        if self.options.get("allocation") == "minmax":  # likewise
            cfg[ALLOCATION_RULE_FIELD] = MINMAX_RULE
        return cfg

    @property
    def reference(self) -> bool:
        """Whether this is the reference job (dense, ``Compressor.reference``): the trained
        baseline evaluated as it is, once per seed, never compressed or skipped."""
        return is_reference(self.method)

    @property
    def calibrates_bias(self) -> bool:
        """Whether this job's compressed layers get bias calibration (``bench.bias_calibration``);
        the dense job has no compressed layer, so its key stays that of the baseline's job."""
        return (not self.reference and not self.fit_only
                and bool((self.finetune or {}).get("calibrate_bias")))

    @property
    def borrows_pick(self) -> bool:
        """Whether this job takes the lr picked at another epoch count (the suite's tune_epochs)."""
        return (self.tune_epochs is not None and not self.fit_only
                and self.finetune.get("epochs") != self.tune_epochs)

    @property
    def reuses_pick(self) -> bool:
        """Whether this job takes its pick from another job (``bench.plan.tuner_key``): another
        seed's, or its own seed's at the suite's tune_epochs. Dense and NN-BCD take none."""
        return picks_lr(self) and (self.seed != TUNE_SEED or self.borrows_pick)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", config_key(self.config()))

    @functools.cached_property
    def tune_key(self) -> str:
        """The key without the seed and the fine-tuning lr: the seeds of one (network, dataset,
        method, budget) share it, so an lr picked from ``lr_grid`` can be shared by them."""
        cfg = self.config()
        del cfg["seed"]
        cfg.pop("tune_epochs", None)
        cfg.pop("pick_fallbacks", None)
        cfg.pop("fallback_when", None)
        if cfg["finetune"] is not None:
            picked = ("lr", "optimizer") if self.optimizer_grid else ("lr",)
            cfg["finetune"] = {k: v for k, v in cfg["finetune"].items() if k not in picked}
            if self.borrows_pick:
                cfg["finetune"]["epochs"] = self.tune_epochs
        return config_key(cfg)

    @functools.cached_property
    def measurement_key(self) -> str:
        """The key of what this job measures: its ``key``, but without the fine-tuning epoch
        count for a method whose result does not depend on it (``measured_recipe``), so that an
        epoch sweep runs such a job once and copies it (``bench.runner.adopt_equal``)."""
        return measurement_key(self.config())

    @property
    def baseline_config(self) -> dict[str, Any]:
        return {"network": self.network, "dataset": self.dataset, "seed": self.seed,
                "train": self.train, "data": self.data}

    @functools.cached_property
    def baseline_key(self) -> str:
        """The key of this job's dense baseline (its checkpoint's name; jobs of one baseline share it)."""
        return config_key(self.baseline_config)

    @property
    def budget(self) -> str:
        return f"x{self.target_ratio:g}" if self.target_ratio is not None else f"knob={self.knob}"


def job_fields(job: Job) -> dict[str, Any]:
    """The fields of a record that say which job it is: its whole config (so the key can be
    checked against it, ``bench.records.key_matches``) and how the suite names it."""
    return {"key": job.key, "suite": job.suite, "label": job.label, "budget": job.budget, **job.config(),
            "finetune": job.finetune}


def measured_recipe(method: str, finetune: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fine-tuning recipe as far as it decides ``method``'s result: none for a method that is
    never fine-tuned (dense: the baseline evaluated as it is), without ``epochs`` for one whose
    training ignores the count (NN-BCD: ``Compressor.uses_finetune_epochs``), whole for the rest
    and for a method not loaded yet."""
    cls = METHODS.get(method) if isinstance(method, str) and method in METHODS else None
    if finetune is None or cls is None or (cls.finetunes and cls.uses_finetune_epochs):
        return finetune
    return None if not cls.finetunes else {k: v for k, v in finetune.items() if k != "epochs"}


def measurement_key(config: dict[str, Any]) -> str:
    """``config_key`` of a job config (``Job.config``, or ``bench.records.record_config`` of a
    record) with its recipe as ``measured_recipe`` leaves it; the epoch count the lr was picked
    at goes too where the epoch count does."""
    recipe = measured_recipe(config.get("method"), config.get("finetune"))
    if recipe is config.get("finetune"):
        return config_key(config)
    return config_key({**{k: v for k, v in config.items() if k != "tune_epochs"}, "finetune": recipe})


def expand(suite: Suite, methods: list[str] | None = None, networks: list[str] | None = None,
           fit_only: bool | None = None) -> list[Job]:
    """All jobs of a suite, optionally restricted to some methods / networks."""
    fit = suite.fit_only if fit_only is None else fit_only
    proto = suite.protocol
    data_cfg = thaw(suite.data)
    entries = _select_methods(suite, methods)
    nets = _select_networks(suite, networks)
    # a fit-only job never fine-tunes: one job, not one per fine-tuning setting
    lr_grid = [float(x) for x in proto.lr_grid] if proto.lr_grid and not fit else None
    optimizer_grid = list(proto.optimizer_grid) if lr_grid and proto.optimizer_grid else None
    lr_extend = int(proto.lr_extend) if lr_grid and proto.lr_extend is not None else None
    fallbacks = int(proto.pick_fallbacks) if lr_grid and proto.pick_fallbacks is not None else None
    fallback_when = proto.fallback_when if fallbacks is not None and proto.fallback_when != "chance" else None
    jobs = []
    for network, layers in nets.items():
        train = check_recipe(suite.recipe("train", network))
        finetune = check_recipe(suite.recipe("finetune", network))
        epochs_list = (None if fit else proto.epochs(network)) or [None]
        for dataset in suite.datasets:
            for seed in proto.seeds:
                for epochs in epochs_list:
                    ft = finetune if epochs is None else {**finetune, "epochs": epochs}
                    for e in entries:
                        for ratio, knob in _budgets(suite, e):
                            if fit and is_reference(e.method):
                                continue
                            jobs.append(Job(suite.name, network, dataset, list(layers), e.method, e.label,
                                            thaw(e.options), ratio, knob, int(seed), train,
                                            ft, data_cfg, fit, lr_grid=lr_grid, optimizer_grid=optimizer_grid,
                                            lr_extend=lr_extend, pick_fallbacks=fallbacks, fallback_when=fallback_when,
                                            budget_tolerance=suite.budget_tolerance,
                                            factorize_time_cap_s=suite.factorize_time_cap_s,
                                            job_time_limit_s=suite.job_time_limit_s,
                                            tune_epochs=proto.tune_epochs if lr_grid else None))
    return prioritize(jobs, suite)


#: the stages that hold the further seeds' jobs, seed by seed
SEED_STAGES = ("headline-seeds", "seeds", "convergence")


def prioritize(jobs: list[Job], suite: Suite) -> list[Job]:
    """Jobs in the suite's ``priority`` order (stable: the expansion order within a stage);
    unchanged without one. Stages not listed come after the listed ones. ``headline-seeds``, when
    listed: the further seeds' baselines and headline jobs (a headline with a CI before the other
    budgets of the first seed); ``seeds``: the further seeds' other jobs (all of them without
    ``headline-seeds``); ``convergence``: the further seeds' runs at a fine-tuning count shorter
    than their network's longest (the tables report the longest; the shorter ones are
    convergence evidence, and a further seed's job takes its pick from the first seed, not from
    its own shorter run). Within each, seed by seed, each in the order of the other stages.
    Returns copies with ``Job.stage`` set."""
    prio = suite.priority
    first = min(suite.protocol.seeds)
    head = suite.headline_ratio
    longest = {net: max(counts) for net in suite.networks if (counts := suite.protocol.epochs(net))}

    def own_stage(j: Job) -> str:
        if j.reference:
            return "baselines"
        if head is not None and j.target_ratio is not None and math.isclose(j.target_ratio, float(head),
                                                                            rel_tol=1e-9):
            return "headline"
        return "budgets"

    def shorter(j: Job) -> bool:
        epochs = (j.finetune or {}).get("epochs")
        return j.network in longest and epochs is not None and epochs < longest[j.network]

    def stage(j: Job) -> str:
        own = own_stage(j)
        if not prio or j.seed == first:
            return own
        if own != "baselines" and shorter(j):
            return "convergence"
        if "headline-seeds" in prio and own in ("baselines", "headline"):
            return "headline-seeds"
        return "seeds" if "seeds" in prio else own

    staged = [replace(j, stage=stage(j)) for j in jobs]
    if not prio:
        return staged
    order = list(prio) + [s for s in STAGES if s not in prio]
    inner = [s for s in order if s not in SEED_STAGES]

    def rank(j: Job) -> tuple:
        if j.stage not in SEED_STAGES:
            return (order.index(j.stage), 0, 0)
        return (order.index(j.stage), j.seed, inner.index(own_stage(j)))

    return sorted(staged, key=rank)


def _budgets(suite: Suite, entry: MethodEntry) -> list[tuple[float | None, Any]]:
    """(target ratio, knob) pairs of a method entry: dense once, fixed knobs, or the ratios."""
    if is_reference(entry.method):
        return [(1.0, None)]
    if entry.knobs is not None:
        return [(None, thaw(k)) for k in entry.knobs]
    return [(float(r), None) for r in suite.ratios]


def _select_methods(suite: Suite, methods: list[str] | None) -> list[MethodEntry]:
    entries = list(suite.methods)
    if not methods:
        return entries
    unknown = sorted(set(methods) - {e.method for e in entries} - {e.label for e in entries})
    if unknown:
        raise SuiteError(f"--methods {unknown} not in suite {suite.name}; it has: "
                         f"{', '.join(e.label for e in entries)}")
    labels = {e.label for e in entries}
    # a label names one entry; a method name that is no label names every entry of that method
    # (``--methods adtn`` used to run adtn-interleaved too, since its method is adtn)
    return [e for e in entries if e.label in methods or (e.method in methods and e.method not in labels)]


def _select_networks(suite: Suite, networks: list[str] | None) -> dict[str, tuple[str, ...]]:
    nets = dict(suite.networks)
    if not networks:
        return nets
    unknown = sorted(set(networks) - set(nets))
    if unknown:
        raise SuiteError(f"--networks {unknown} not in suite {suite.name}; it has: {', '.join(nets)}")
    return {n: nets[n] for n in networks}
