"""The suite spec: what ``bench.suite.load_suite`` returns, a frozen dataclass tree built once
from a validated suite mapping. Every reader (expansion, planning, the CLI's listing and
``--print-suite``, the paper's roles) reads these fields; nothing reads the YAML a second way.

Mappings are read-only views and lists are tuples, so no reader can change what another sees;
``thaw`` gives back the plain dicts and lists a job's config (and so its key) is built from,
exactly as YAML wrote them (``1`` stays ``1``, not ``1.0``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from bench.suite_schema import DATA_KEYS, DEFAULT_JOB_TIME_LIMIT_S, PROTOCOL_KEYS, method_entry


def freeze(value: Any) -> Any:
    """A read-only copy: dicts become mapping proxies, lists tuples, recursively."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain dicts and lists ``freeze`` was given (YAML never makes tuples)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class MethodEntry:
    """One method of a suite: the registered ``method``, the ``label`` its rows carry, the
    ``options`` its constructor gets, and fixed ``knobs`` (else the suite's ratios)."""

    method: str
    label: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    knobs: tuple | None = None


@dataclass(frozen=True)
class Protocol:
    """How every method of the suite is compared: seeds, the fine-tuning epoch sweep, the
    lr/optimizer tuning grid and which suites' equal jobs are reused. One unit: a suite that
    writes ``protocol:`` replaces its base's whole, so no half-inherited sweep survives."""

    seeds: tuple[int, ...] = (0,)
    finetune_epochs: tuple | None = None
    network_epochs: Mapping[str, tuple] = field(default_factory=lambda: MappingProxyType({}))
    tune_epochs: Any = None
    lr_grid: tuple[float, ...] | None = None
    optimizer_grid: tuple[str, ...] | None = None
    lr_extend: int | None = None
    pick_fallbacks: int | None = None
    fallback_when: str | None = None
    reuse: tuple[str, ...] = ()

    def epochs(self, network: str) -> tuple | None:
        """The fine-tuning epoch counts a network's jobs sweep: its own (a network whose
        ranking settles sooner needs fewer), else the suite's; None: no sweep."""
        return self.network_epochs.get(network, self.finetune_epochs)


@dataclass(frozen=True)
class Suite:
    """A resolved, validated suite (``base:`` merged, ``--set`` applied)."""

    name: str
    datasets: tuple[str, ...]
    networks: Mapping[str, tuple[str, ...]]
    methods: tuple[MethodEntry, ...]
    description: str = ""
    ratios: tuple = ()
    train: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    finetune: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: network -> {train: ..., finetune: ...} overriding the suite's recipes key by key
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType(dict(DATA_KEYS)))
    protocol: Protocol = Protocol()
    fit_only: bool = False
    paper: tuple[str, ...] | None = None
    priority: tuple[str, ...] | None = None
    headline_ratio: float | None = None
    budget_tolerance: float | None = None
    factorize_time_cap_s: float | None = None
    job_time_limit_s: float = DEFAULT_JOB_TIME_LIMIT_S

    @classmethod
    def build(cls, raw: Mapping[str, Any]) -> Suite:
        """The spec of a suite mapping whose values have their types (``bench.suite_check``)."""
        proto = {k: v for k, v in (raw.get("protocol") or {}).items() if v is not None}
        protocol = Protocol(**{k: freeze(v) for k, v in proto.items() if k != "seeds"},
                            seeds=tuple(int(s) for s in proto.get("seeds") or [0]))
        methods = tuple(MethodEntry(e["method"], e["label"], freeze(e["options"]), freeze(e["knobs"]))
                        for e in map(method_entry, raw["methods"]))
        paper = raw.get("paper")
        return cls(name=raw["name"], datasets=tuple(raw["datasets"]), networks=freeze(raw["networks"]),
                   methods=methods, description=str(raw.get("description") or "").strip(),
                   ratios=tuple(float(r) for r in raw.get("ratios") or []),
                   train=freeze(raw.get("train") or {}), finetune=freeze(raw.get("finetune") or {}),
                   recipes=freeze({n: r or {} for n, r in (raw.get("recipes") or {}).items()}),
                   data=freeze({**DATA_KEYS, **(raw.get("data") or {})}), protocol=protocol,
                   fit_only=bool(raw.get("fit_only")),
                   paper=None if paper is None else tuple([paper] if isinstance(paper, str) else paper),
                   priority=freeze(raw.get("priority")), headline_ratio=raw.get("headline_ratio"),
                   budget_tolerance=raw.get("budget_tolerance"),
                   factorize_time_cap_s=raw.get("factorize_time_cap_s"),
                   job_time_limit_s=float(raw.get("job_time_limit_s") or DEFAULT_JOB_TIME_LIMIT_S))

    def recipe(self, part: str, network: str) -> dict[str, Any]:
        """The ``train`` or ``finetune`` recipe a network's jobs get: the suite's, then its own."""
        return {**thaw(getattr(self, part)), **thaw((self.recipes.get(network) or {}).get(part) or {})}

    def with_methods(self, names: list[str]) -> Suite:
        """This suite with plain method entries added (a plugin's, named on the command line)."""
        return replace(self, methods=self.methods + tuple(MethodEntry(n, n) for n in names))

    def as_mapping(self) -> dict[str, Any]:
        """The suite as a YAML mapping in the file's own keys (what ``--print-suite`` shows)."""
        p = self.protocol
        protocol = {k: thaw(getattr(p, k)) for k in PROTOCOL_KEYS}
        protocol = {k: v for k, v in protocol.items() if v not in (None, [], {})}
        methods = [{"method": m.method, "label": m.label, "options": thaw(m.options), "knobs": thaw(m.knobs)}
                   for m in self.methods]
        out = {"name": self.name, "description": self.description, "datasets": list(self.datasets),
               "networks": thaw(self.networks), "methods": methods, "ratios": list(self.ratios),
               "train": thaw(self.train), "finetune": thaw(self.finetune), "recipes": thaw(self.recipes),
               "data": thaw(self.data), "protocol": protocol, "fit_only": self.fit_only,
               "paper": thaw(self.paper), "priority": thaw(self.priority), "headline_ratio": self.headline_ratio,
               "budget_tolerance": self.budget_tolerance, "factorize_time_cap_s": self.factorize_time_cap_s,
               "job_time_limit_s": self.job_time_limit_s}
        return {k: v for k, v in out.items() if v not in (None, {}, "")}
