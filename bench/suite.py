"""Suites: a YAML file (+ ``--set`` overrides) expanded into jobs.

One job = network x dataset x method entry x budget x seed, where the budget is a target
compression ratio of the suite's layers, or a fixed knob when the method entry lists ``knobs``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.records import config_key
from bench.registry import DATASETS, METHODS, NETWORKS, dataset_names, method_names, network_names
from bench.train import check_recipe

SUITES_DIR = Path(__file__).parent / "suites"
SUITE_KEYS = {
    "description": "one line shown by --list",
    "datasets": "dataset names",
    "networks": "mapping network -> list of layer names to compress",
    "methods": "method names or {method, label, options, knobs}",
    "ratios": "target compression ratios of the compressed layers",
    "seeds": "seeds; each gets its own dense baseline",
    "train": "recipe of the dense baseline",
    "finetune": "recipe of the fine-tuning after compression",
    "recipes": "per-network {train: ..., finetune: ...} overriding the suite's",
    "data": "val_fraction, train_subset",
    "fit_only": "measure weight-space fit only (no fine-tuning)",
    "base": "another suite whose keys this one inherits and overrides (train/finetune/data key by key)",
}
#: keys a child suite overrides entry by entry (``finetune: {epochs: 5}`` keeps the base's lr);
#: every other key it replaces whole (``networks: {fc2: [...]}`` drops the base's other networks)
MERGED_KEYS = ("train", "finetune", "data")
METHOD_ENTRY_KEYS = {"method", "label", "options", "knobs"}
DATA_KEYS = {"val_fraction": 0.1, "train_subset": None}


class SuiteError(ValueError):
    """A suite file or override that does not make sense; the message says what is valid."""


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(spec: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a suite by name (bench/suites/NAME.yaml) or path, apply ``key.sub=value`` overrides."""
    path = Path(spec)
    if not (spec.endswith((".yaml", ".yml")) and path.is_file()):
        path = SUITES_DIR / f"{spec}.yaml"
        if not path.is_file():
            raise SuiteError(f"unknown suite {spec!r}; known: {', '.join(suite_names())} (or a path to a .yaml file)")
    suite = _read_with_base(path, seen=())
    suite["name"] = path.stem
    for item in overrides or []:
        apply_override(suite, item)
    validate(suite)
    return suite


def _read_with_base(path: Path, seen: tuple) -> dict[str, Any]:
    """A suite's mapping, merged over its ``base`` suite's (keys of the child win; MERGED_KEYS
    are merged entry by entry)."""
    suite = yaml.safe_load(path.read_text()) or {}
    if not isinstance(suite, dict):
        raise SuiteError(f"{path}: a suite is a YAML mapping")
    base = suite.pop("base", None)
    if base is None:
        return suite
    base_path = SUITES_DIR / f"{base}.yaml"
    if not base_path.is_file() or base in seen:
        raise SuiteError(f"{path}: base suite {base!r} is unknown or circular; known: {', '.join(suite_names())}")
    merged = _read_with_base(base_path, seen + (base,))
    for key, value in suite.items():
        if key in MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


def apply_override(suite: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise SuiteError(f"--set takes key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if keys[0] not in SUITE_KEYS:
        raise SuiteError(f"--set: unknown key {keys[0]!r}; valid: {', '.join(sorted(SUITE_KEYS))}")
    value = yaml.safe_load(raw)
    node = suite
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise SuiteError(f"--set {dotted}: {k!r} is not a mapping")
    node[keys[-1]] = value


def validate(suite: dict[str, Any]) -> None:
    bad = sorted(set(suite) - set(SUITE_KEYS) - {"name"})
    if bad:
        raise SuiteError(f"suite {suite['name']}: unknown key(s) {bad}; valid: {', '.join(sorted(SUITE_KEYS))}")
    for key in ("datasets", "networks", "methods"):
        if not suite.get(key):
            raise SuiteError(f"suite {suite['name']}: {key!r} is missing or empty")
    known_ds, known_nets, known_methods = dataset_names(), network_names(), method_names()
    for d in suite["datasets"]:
        if d not in DATASETS:
            raise SuiteError(f"unknown dataset {d!r}; known: {', '.join(known_ds)}")
    if not isinstance(suite["networks"], dict):
        raise SuiteError("'networks' maps each network to the list of its layers to compress")
    for n in suite["networks"]:
        if n not in NETWORKS:
            raise SuiteError(f"unknown network {n!r}; known: {', '.join(known_nets)}")
    for entry in suite["methods"]:
        m = method_entry(entry)
        if m["method"] not in METHODS:
            raise SuiteError(f"unknown method {m['method']!r}; known: {', '.join(known_methods)}")
    for part in ("train", "finetune"):
        try:
            check_recipe(suite.get(part, {}), part)
            for net, rec in (suite.get("recipes") or {}).items():
                check_recipe((rec or {}).get(part, {}), f"recipes.{net}.{part}")
        except ValueError as e:
            raise SuiteError(str(e)) from None
    bad = sorted(set(suite.get("data") or {}) - set(DATA_KEYS))
    if bad:
        raise SuiteError(f"unknown data key(s) {bad}; valid: {', '.join(DATA_KEYS)}")
    for r in suite.get("ratios") or []:
        if not isinstance(r, (int, float)) or r <= 0:
            raise SuiteError(f"ratios must be positive numbers, got {r!r}")


def method_entry(entry: Any) -> dict[str, Any]:
    """Normalise a suite's method entry to {method, label, options, knobs}."""
    if isinstance(entry, str):
        entry = {"method": entry}
    if not isinstance(entry, dict) or "method" not in entry:
        raise SuiteError(f"a method entry is a name or a mapping with 'method', got {entry!r}")
    bad = sorted(set(entry) - METHOD_ENTRY_KEYS)
    if bad:
        raise SuiteError(f"method entry {entry!r}: unknown key(s) {bad}; valid: {', '.join(sorted(METHOD_ENTRY_KEYS))}")
    options = dict(entry.get("options") or {})
    label = entry.get("label") or entry["method"]
    return {"method": entry["method"], "label": label, "options": options, "knobs": entry.get("knobs")}


@dataclass
class Job:
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
    key: str = field(default="", init=False)

    def config(self) -> dict[str, Any]:
        """Everything that determines the result (and so the record key). A fit-only job never
        fine-tunes, so its key leaves the fine-tuning recipe out."""
        return {"network": self.network, "dataset": self.dataset, "layers": self.layers,
                "method": self.method, "options": self.options, "target_ratio": self.target_ratio,
                "knob": self.knob, "seed": self.seed, "train": self.train,
                "finetune": None if self.fit_only else self.finetune, "data": self.data, "fit_only": self.fit_only}

    def __post_init__(self) -> None:
        self.key = config_key(self.config())

    @property
    def baseline_config(self) -> dict[str, Any]:
        return {"network": self.network, "dataset": self.dataset, "seed": self.seed,
                "train": self.train, "data": self.data}

    @property
    def budget(self) -> str:
        return f"x{self.target_ratio:g}" if self.target_ratio is not None else f"knob={self.knob}"


def expand(suite: dict[str, Any], methods: list[str] | None = None, networks: list[str] | None = None,
           fit_only: bool | None = None) -> list[Job]:
    """All jobs of a suite, optionally restricted to some methods / networks."""
    fit = bool(suite.get("fit_only")) if fit_only is None else fit_only
    data_cfg = {**DATA_KEYS, **(suite.get("data") or {})}
    entries = [method_entry(e) for e in suite["methods"]]
    if methods:
        unknown = sorted(set(methods) - {e["method"] for e in entries} - {e["label"] for e in entries})
        if unknown:
            raise SuiteError(f"--methods {unknown} not in suite {suite['name']}; it has: "
                             f"{', '.join(e['label'] for e in entries)}")
        entries = [e for e in entries if e["method"] in methods or e["label"] in methods]
    nets = suite["networks"]
    if networks:
        unknown = sorted(set(networks) - set(nets))
        if unknown:
            raise SuiteError(f"--networks {unknown} not in suite {suite['name']}; it has: {', '.join(nets)}")
        nets = {n: nets[n] for n in networks}
    jobs = []
    for network, layers in nets.items():
        rec = (suite.get("recipes") or {}).get(network) or {}
        train = check_recipe({**(suite.get("train") or {}), **(rec.get("train") or {})})
        finetune = check_recipe({**(suite.get("finetune") or {}), **(rec.get("finetune") or {})})
        for dataset in suite["datasets"]:
            for seed in suite.get("seeds") or [0]:
                for e in entries:
                    if e["method"] == "dense":
                        budgets = [(1.0, None)]
                    elif e["knobs"] is not None:
                        budgets = [(None, k) for k in e["knobs"]]
                    else:
                        budgets = [(float(r), None) for r in suite.get("ratios") or []]
                    for ratio, knob in budgets:
                        if fit and e["method"] == "dense":
                            continue
                        jobs.append(Job(suite["name"], network, dataset, list(layers), e["method"], e["label"],
                                        copy.deepcopy(e["options"]), ratio, knob, int(seed), train,
                                        finetune, data_cfg, fit))
    return jobs
