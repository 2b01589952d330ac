"""Suites: a YAML file (+ ``--set`` overrides) expanded into jobs.

One job = network x dataset x method entry x budget x seed (x fine-tuning epochs, when the
suite lists ``finetune_epochs``), where the budget is a target compression ratio of the
suite's layers, or a fixed knob when the method entry lists ``knobs``.

Every bad value is refused by ``validate`` (called by ``load_suite``) with a one-line
``SuiteError`` naming the value and the valid ones, before any job runs.
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.bias_calibration import CALIBRATION_RULE
from bench.errors import InputError
from bench.records import config_key
from bench.registry import DATASETS, METHODS, NETWORKS, dataset_names, method_names, network_names
from bench.train import OPTIMIZERS, check_recipe

SUITES_DIR = Path(__file__).parent / "suites"
#: a suite's name as ``base:`` and ``reuse:`` take it: a file of the suites folder or a folder of
#: ``--out``, never a path (``..`` used to read records or suites from outside their roots)
SUITE_NAME = re.compile(r"\w[\w.-]*")
#: a job stopped after this long is recorded failed: a runaway recipe (``train.epochs=1e9``) or a
#: plugin that never returns must not hold a sweep forever; ten hours is far above any committed job
DEFAULT_JOB_TIME_LIMIT_S = 36_000.0
SUITE_KEYS = {
    "description": "one line shown by --list",
    "datasets": "dataset names",
    "networks": "mapping network -> list of layer names to compress",
    "methods": "method names or {method, label, options, knobs}",
    "ratios": "target compression ratios of the compressed layers",
    "seeds": "seeds; each gets its own dense baseline",
    "train": "recipe of the dense baseline",
    "finetune": "recipe of the fine-tuning after compression",
    "recipes": "per-network {train: ..., finetune: ..., finetune_epochs: [...]} overriding the suite's",
    "data": "val_fraction, train_subset",
    "fit_only": "measure weight-space fit only (no fine-tuning)",
    "base": "another suite whose keys this one inherits and overrides (train/finetune/data key by key)",
    "paper": "figure roles this suite's results serve (see PAPER_ROLES); no effect on jobs",
    "finetune_epochs": "fine-tuning epochs to sweep: each job runs once per value (sets finetune.epochs)",
    "lr_grid": "fine-tuning learning rates a method's lr is picked from (Job.lr_grid)",
    "optimizer_grid": f"fine-tuning optimizers picked from with lr_grid, each over every lr (among "
                      f"{', '.join(OPTIMIZERS)}; bench/tuning.py)",
    "lr_extend": "integer >= 0: times an optimizer's best lr at an edge of lr_grid tries the next value out "
                 "(x3 or /3; bench/tuning.py)",
    "tune_epochs": "one of finetune_epochs: the epoch count whose lr pick (on the tuning seed) every epoch "
                   "count uses (default: each epoch count picks its own)",
    "reuse": "suites whose records in the same output a job with an equal key takes instead of running "
             "(copied with reused_from)",
    "priority": f"order of the job stages, a list among {', '.join(('baselines', 'headline', 'budgets', 'seeds'))}"
                " (the order --time-budget spends its time in)",
    "headline_ratio": "the paper's headline budget, one of ratios (the 'headline' priority stage)",
    "budget_tolerance": "factor >= 1: a method whose smallest size is more than this over a budget is "
                        "recorded skipped there (default: it runs at its smallest size)",
    "factorize_time_cap_s": "seconds: a job whose calibrated factorisation estimate exceeds this is "
                            "recorded skipped (needs a calibration, bench/cost.py)",
    "job_time_limit_s": f"seconds a job may run (its baseline not counted) before it is stopped and "
                        f"recorded failed (default {DEFAULT_JOB_TIME_LIMIT_S:g})",
}
#: priority stages (``priority: [baselines, headline, budgets, seeds]``): the dense jobs, the
#: headline budget of every method, the other budgets, and every job of the seeds after the
#: first (the lowest seed, which is the one that tunes the lr)
STAGES = ("baselines", "headline", "budgets", "seeds")
#: keys a child suite overrides entry by entry (``finetune: {epochs: 5}`` keeps the base's lr);
#: every other key it replaces whole (``networks: {fc2: [...]}`` drops the base's other networks)
MERGED_KEYS = ("train", "finetune", "data")
METHOD_ENTRY_KEYS = {"method", "label", "options", "knobs"}
DATA_KEYS = {"val_fraction": 0.1, "train_subset": None}
#: the paper's figures a suite can feed (``paper: [accuracy, fit]``)
PAPER_ROLES = ("accuracy", "fit", "cost", "headline", "depth", "order", "convergence", "equal-budget")


class SuiteError(InputError, ValueError):
    """A suite file or override that does not make sense; the message says what is valid."""


# --- YAML --------------------------------------------------------------------------------------
#: YAML 1.1 wants a dot and a signed exponent in a float (``1.0e-3``); people write ``1e-3``,
#: which PyYAML then reads as a string. This is the YAML 1.2 core float (plus ``_`` separators).
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)


class SuiteLoader(yaml.SafeLoader):
    """SafeLoader whose floats include exponent forms without a dot (1e6, 1e-3, 5.0e-4)."""


SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SuiteLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


#: bounds on a suite's YAML: text size, nodes after expanding aliases, nesting depth (an alias
#: bomb is a few hundred bytes that expand to billions of nodes and used to hang the CLI)
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32


def parse_yaml(text: str, where: str) -> Any:
    """``text`` parsed with ``SuiteLoader``; malformed or oversized YAML is a one-line SuiteError."""
    if len(text) > MAX_YAML_BYTES:
        raise SuiteError(f"{where}: {len(text):,} characters of YAML, more than a suite needs "
                         f"(at most {MAX_YAML_BYTES:,})")
    try:
        _check_size(yaml.compose(text, Loader=SuiteLoader), where)
        return yaml.load(text, Loader=SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SuiteError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None


def _check_size(root: yaml.Node | None, where: str) -> None:
    """Count the nodes the document has once aliases are expanded, stopping at the bounds."""
    count, stack = 0, [(root, 1)] if root is not None else []
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
            what = (f"more than {MAX_YAML_NODES:,} values once its aliases are expanded" if count > MAX_YAML_NODES
                    else f"nested more than {MAX_YAML_DEPTH} levels deep")
            raise SuiteError(f"{where}: the YAML has {what}; a suite needs far less")
        if isinstance(node, yaml.SequenceNode):
            stack += [(child, depth + 1) for child in node.value]
        elif isinstance(node, yaml.MappingNode):
            stack += [(part, depth + 1) for pair in node.value for part in pair]


def read_text(path: Path) -> str:
    """A suite file's text; a file that is not UTF-8 is a SuiteError naming it."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise SuiteError(f"{path}: cannot be read ({os.strerror(e.errno) if e.errno else e})") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


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


def read_suite_file(path: Path) -> dict[str, Any]:
    """A suite file's mapping with its ``base:`` chain merged, not validated (listing and the
    paper's figures read suites this way; a run also applies overrides and validates)."""
    return _read_with_base(Path(path), seen=())


def _read_with_base(path: Path, seen: tuple) -> dict[str, Any]:
    """A suite's mapping, merged over its ``base`` suite's (keys of the child win; MERGED_KEYS
    are merged entry by entry)."""
    suite = parse_yaml(read_text(path), str(path)) or {}
    if not isinstance(suite, dict):
        raise SuiteError(f"{path}: a suite is a YAML mapping, got {type(suite).__name__}")
    base = suite.pop("base", None)
    if base is None:
        return suite
    base_path = SUITES_DIR / f"{base}.yaml" if isinstance(base, str) and SUITE_NAME.fullmatch(base) else None
    if base_path is None or not base_path.is_file() or base in seen:
        raise SuiteError(f"{path}: base suite {base!r} is unknown or circular; known: {', '.join(suite_names())}")
    merged = _read_with_base(base_path, seen + (base,))
    for key, value in suite.items():
        if key in MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


def apply_override(suite: dict[str, Any], item: str) -> None:
    """``key.sub=value``: the value is YAML (``seeds=[0,1]``, ``finetune.lr=1e-3``)."""
    if "=" not in item:
        raise SuiteError(f"--set takes key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if keys[0] not in SUITE_KEYS:
        raise SuiteError(f"--set: unknown key {keys[0]!r}; valid: {', '.join(sorted(SUITE_KEYS))}")
    value = parse_yaml(raw, f"--set {item}")
    node = suite
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise SuiteError(f"--set {dotted}: {k!r} is {node!r}, not a mapping")
    node[keys[-1]] = value


# --- validation --------------------------------------------------------------------------------
def validate(suite: dict[str, Any]) -> None:
    """Refuse any bad key or value with a one-line SuiteError naming it and the valid ones."""
    bad = sorted(map(str, set(suite) - set(SUITE_KEYS) - {"name"}))
    if bad:
        raise SuiteError(f"suite {suite['name']}: unknown key(s) {bad}; valid: {', '.join(sorted(SUITE_KEYS))}")
    _check_names(suite)
    _check_lists(suite)
    _check_recipes(suite)
    _check_data(suite)
    if suite.get("fit_only") is not None and not isinstance(suite["fit_only"], bool):
        raise SuiteError(f"fit_only {suite['fit_only']!r}: expected true or false")
    _check_priority(suite)
    _check_layers(suite)
    _check_reuse(suite)


def _check_reuse(suite: dict[str, Any]) -> None:
    """tune_epochs is one of finetune_epochs (and needs an lr_grid); reuse names other suites."""
    te = suite.get("tune_epochs")
    for net in suite["networks"] if te is not None else []:
        sweep = network_epochs(suite, net)
        if not sweep or te not in sweep or not suite.get("lr_grid"):
            raise SuiteError(f"tune_epochs {te!r}: expected one of finetune_epochs {sweep} "
                             f"(network {net}) in a suite with an lr_grid")
    for key in ("optimizer_grid", "lr_extend"):
        if suite.get(key) is not None and not suite.get("lr_grid"):
            raise SuiteError(f"{key} {suite[key]!r}: needs an lr_grid to extend or cross with")
    ext = suite.get("lr_extend")
    if ext is not None and (isinstance(ext, bool) or not isinstance(ext, int) or not 0 <= ext <= 5):
        raise SuiteError(f"lr_extend {ext!r}: expected an integer in 0..5")
    reuse = suite.get("reuse")
    if reuse is None:
        return
    if (not isinstance(reuse, list) or not reuse
            or any(not isinstance(r, str) or not SUITE_NAME.fullmatch(r) or r == suite["name"] for r in reuse)):
        raise SuiteError(f"reuse {reuse!r}: expected a list of other suites' names (folders of --out, no paths), "
                         "e.g. [mnist]")


def _check_priority(suite: dict[str, Any]) -> None:
    """priority, headline_ratio, budget_tolerance, factorize_time_cap_s."""
    prio = suite.get("priority")
    if prio is not None:
        if not isinstance(prio, list) or not prio or not all(isinstance(p, str) for p in prio):
            raise SuiteError(f"priority {prio!r}: expected a list of stages among {', '.join(STAGES)}, "
                             "e.g. [baselines, headline, budgets, seeds]")
        bad = next((p for p in prio if p not in STAGES), None)
        if bad is not None:
            raise SuiteError(f"priority: unknown stage {bad!r}; valid: {', '.join(STAGES)}")
        dup = next((p for i, p in enumerate(prio) if p in prio[:i]), None)
        if dup is not None:
            raise SuiteError(f"priority: {dup!r} is listed twice in {prio!r}")
        if "headline" in prio and suite.get("headline_ratio") is None:
            raise SuiteError("priority lists 'headline' but the suite has no headline_ratio")
    head = suite.get("headline_ratio")
    if head is not None:
        if not (_real(head) and head > 0):
            raise SuiteError(f"headline_ratio {head!r}: expected a finite number > 0")
        ratios = suite.get("ratios") or []
        if not any(_real(r) and math.isclose(float(r), float(head), rel_tol=1e-9) for r in ratios):
            raise SuiteError(f"headline_ratio {head!r} is not one of ratios {ratios!r}")
    tol = suite.get("budget_tolerance")
    if tol is not None and not (_real(tol) and tol >= 1):
        raise SuiteError(f"budget_tolerance {tol!r}: expected a finite number >= 1 (e.g. 1.25)")
    cap = suite.get("factorize_time_cap_s")
    if cap is not None and not (_real(cap) and cap > 0):
        raise SuiteError(f"factorize_time_cap_s {cap!r}: expected a finite number of seconds > 0")
    limit = suite.get("job_time_limit_s")
    if limit is not None and not (_real(limit) and 1 <= limit <= 10 ** 7):
        raise SuiteError(f"job_time_limit_s {limit!r}: expected seconds from 1 to 10,000,000")


def _check_names(suite: dict[str, Any]) -> None:
    """datasets, networks and methods: present, of the right shape, registered."""
    for key in ("datasets", "networks", "methods"):
        if not suite.get(key):
            raise SuiteError(f"suite {suite['name']}: {key!r} is missing or empty")
    datasets, nets = suite["datasets"], suite["networks"]
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise SuiteError(f"datasets {datasets!r}: expected a list of dataset names; known: {', '.join(dataset_names())}")
    for d in datasets:
        if d not in DATASETS:
            raise SuiteError(f"unknown dataset {d!r}; known: {', '.join(dataset_names())}")
    if not isinstance(nets, dict):
        raise SuiteError(f"networks {nets!r}: expected a mapping network -> list of its layers to compress, "
                         "e.g. {fc2: [fc1, fc2]}")
    for n, layers in nets.items():
        if not isinstance(n, str) or n not in NETWORKS:
            raise SuiteError(f"unknown network {n!r}; known: {', '.join(network_names())}")
        if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
            raise SuiteError(f"networks.{n} {layers!r}: expected a non-empty list of layer names, e.g. [fc1]")
    if not isinstance(suite["methods"], list):
        raise SuiteError(f"methods {suite['methods']!r}: expected a list of method names or "
                         "{method, label, options, knobs} entries")
    labels: set[str] = set()
    for entry in suite["methods"]:
        m = method_entry(entry)
        if not isinstance(m["method"], str) or m["method"] not in METHODS:
            raise SuiteError(f"unknown method {m['method']!r}; known: {', '.join(method_names())}")
        if m["label"] in labels:
            raise SuiteError(f"method {m['label']!r} is listed twice; give one entry a different label")
        labels.add(m["label"])
        _check_options(m)


def _check_options(m: dict[str, Any]) -> None:
    """Build the method with its options now, so a misspelt or out-of-range option is refused
    before any baseline trains (it used to fail every job after training)."""
    cls = METHODS.get(m["method"])
    try:
        cls(**m["options"])
    except TypeError as e:
        valid = []  # the named parameters of every __init__ the options pass through (**options)
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and klass is not object:
                params = inspect.signature(klass.__init__).parameters
                valid += [p for p, v in params.items() if p != "self" and p not in valid
                          and v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        bad = sorted(map(str, set(m["options"]) - set(valid)))
        why = f"unknown option(s) {', '.join(bad)}" if bad else (str(e).splitlines() or ["bad options"])[0]
        raise SuiteError(f"method {m['label']!r} options {m['options']!r}: {why}; valid: {', '.join(valid)}") from None
    except (ValueError, ArithmeticError) as e:
        raise SuiteError(f"method {m['label']!r} options {m['options']!r}: {(str(e).splitlines() or [''])[0]}") from None


def _real(v: Any) -> bool:
    """A finite real number (bools are not numbers here: ``seeds: [true]`` is a typo)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _seed(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v < 2**32


#: list-valued keys: (test of one element, what the elements must be, an example)
LIST_KEYS = {
    "seeds": (_seed, "integers in 0..4294967295", "[0, 1]"),
    # a ratio below 1 would ask a compressor for more parameters than the dense layers hold
    "ratios": (lambda v: _real(v) and v >= 1, "finite numbers >= 1", "[2, 8, 32]"),
    "finetune_epochs": (lambda v: _real(v) and v > 0, "finite numbers > 0", "[1, 3]"),
    "lr_grid": (lambda v: _real(v) and v > 0, "finite numbers > 0", "[0.003, 0.01, 0.03]"),
    "optimizer_grid": (lambda v: isinstance(v, str) and v in OPTIMIZERS, f"optimizers among {', '.join(OPTIMIZERS)}",
                       "[sgd, adam]"),
    "paper": (lambda v: isinstance(v, str) and v in PAPER_ROLES, f"figure roles among {', '.join(PAPER_ROLES)}",
              "[accuracy, fit]"),
}


def _check_lists(suite: dict[str, Any], where: str = "") -> None:
    """Each list key, when given, is a non-empty list of valid, distinct values."""
    for key, (ok, what, example) in LIST_KEYS.items():
        values = suite.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{where}{key} {values!r}: expected a non-empty list of {what}, e.g. {example}")
        for v in values:
            if not ok(v):
                raise SuiteError(f"{where}{key}: bad value {v!r}; expected a list of {what}, e.g. {example}")
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise SuiteError(f"{where}{key}: {dup!r} is listed twice in {values!r}")


def _check_recipes(suite: dict[str, Any]) -> None:
    """train / finetune and every per-network override of them (types and ranges)."""
    recipes = suite.get("recipes") or {}
    if not isinstance(recipes, dict):
        raise SuiteError(f"recipes {recipes!r}: expected a mapping network -> {{train: ..., finetune: ...}}")
    for net, rec in recipes.items():
        if not isinstance(net, str) or net not in NETWORKS:
            raise SuiteError(f"recipes: unknown network {net!r}; known: {', '.join(network_names())}")
        if rec is not None and (not isinstance(rec, dict) or set(rec) - {"train", "finetune", "finetune_epochs"}):
            raise SuiteError(f"recipes.{net} {rec!r}: expected a mapping with keys train, finetune, finetune_epochs")
        if rec and "finetune_epochs" in rec:
            _check_lists({"finetune_epochs": rec["finetune_epochs"]}, f"recipes.{net}.")
    try:
        for part in ("train", "finetune"):
            base = {} if suite.get(part) is None else suite[part]
            check_recipe(base, part)
            for net, rec in recipes.items():
                check_recipe({**base, **((rec or {}).get(part) or {})}, f"recipes.{net}.{part}")
    except ValueError as e:
        raise SuiteError(str(e)) from None


def _check_data(suite: dict[str, Any]) -> None:
    data = suite.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        raise SuiteError(f"data {data!r}: expected a mapping with keys {', '.join(DATA_KEYS)}")
    bad = sorted(map(str, set(data) - set(DATA_KEYS)))
    if bad:
        raise SuiteError(f"unknown data key(s) {bad}; valid: {', '.join(DATA_KEYS)}")
    vf = data.get("val_fraction", DATA_KEYS["val_fraction"])
    if not (_real(vf) and 0 <= vf < 1):
        raise SuiteError(f"data.val_fraction {vf!r}: expected a number in [0, 1)")
    sub = data.get("train_subset")
    if sub is not None and not (isinstance(sub, numbers.Integral) and not isinstance(sub, bool) and sub >= 1):
        raise SuiteError(f"data.train_subset {sub!r}: expected an integer >= 1 (or null: the whole training set)")


def _input_shape(dataset: str) -> tuple[tuple[int, int, int], int] | None:
    """(input shape, classes) of a dataset without reading it, from what it registered."""
    from bench.registry import dataset_spec

    spec = dataset_spec(dataset)
    return tuple(spec.shape), int(spec.classes)


def _check_layers(suite: dict[str, Any]) -> None:
    """Every target layer exists in its network, built (untrained, on the meta device: no
    memory, no random numbers drawn) for every dataset of the suite, and is Linear/Conv2d (what
    the methods replace)."""
    from torch import nn

    for net, layers in suite["networks"].items():
        for dataset in suite["datasets"]:
            model = _untrained(net, dataset)
            if model is None:
                continue
            names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            for name in layers:
                if name not in names:
                    raise SuiteError(f"networks.{net}: {net} (on {dataset}) has no Linear/Conv2d layer {name!r}; "
                                     f"its layers: {', '.join(names)}")
            if not suite.get("fit_only") and _finetune_recipe(suite, net).get("scope") == "after_frozen_prefix":
                from bench.prefix import PrefixError, check_cuttable
                try:
                    check_cuttable(model, layers, _input_shape(dataset)[0])
                except PrefixError as e:
                    raise SuiteError(f"networks.{net} (on {dataset}): {e}") from None


def _finetune_recipe(suite: dict[str, Any], net: str) -> dict[str, Any]:
    """The fine-tuning recipe keys a network's jobs get (the suite's, then its recipe's)."""
    rec = (suite.get("recipes") or {}).get(net) or {}
    return {**(suite.get("finetune") or {}), **(rec.get("finetune") or {})}


@functools.lru_cache(maxsize=16)
def meta_network(net: str, dataset: str):
    """``_untrained``, built once per (network, dataset): layer sizes for the cost model and
    the pre-run skips (never run; its parameters hold no memory)."""
    return _untrained(net, dataset)


def _untrained(net: str, dataset: str):
    import torch

    from bench.models import build_network

    shape = _input_shape(dataset)
    if shape is None:
        return None
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return build_network(net, *shape)
    except Exception as e:  # noqa: BLE001 - a network that cannot take this input, said in one line
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise SuiteError(f"network {net} cannot be built for dataset {dataset} (input {shape[0]}, "
                         f"{shape[1]} classes): {why}") from None


def method_entry(entry: Any) -> dict[str, Any]:
    """Normalise a suite's method entry to {method, label, options, knobs}."""
    if isinstance(entry, str):
        entry = {"method": entry}
    if not isinstance(entry, dict) or "method" not in entry:
        raise SuiteError(f"a method entry is a name or a mapping with 'method', got {entry!r}")
    bad = sorted(map(str, set(entry) - METHOD_ENTRY_KEYS))
    if bad:
        raise SuiteError(f"method entry {entry!r}: unknown key(s) {bad}; valid: {', '.join(sorted(METHOD_ENTRY_KEYS))}")
    if entry.get("options") is not None and not isinstance(entry["options"], dict):
        raise SuiteError(f"method {entry['method']!r}: options {entry['options']!r}: expected a mapping")
    knobs = entry.get("knobs")
    if knobs is not None and (not isinstance(knobs, list) or not knobs):
        raise SuiteError(f"method {entry['method']!r}: knobs {knobs!r}: expected a non-empty list")
    options = dict(entry.get("options") or {})
    label = entry.get("label") or entry["method"]
    return {"method": entry["method"], "label": label, "options": options, "knobs": knobs}


# --- jobs --------------------------------------------------------------------------------------
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
    #: fine-tuning learning rates the method's lr is picked from (the suite's ``lr_grid``), the
    #: optimizers crossed with them (``optimizer_grid``) and the edge extensions (``lr_extend``);
    #: the last two are in the key only when set
    lr_grid: list[float] | None = None
    optimizer_grid: list[str] | None = None
    lr_extend: int | None = None
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
        if self.calibrates_bias:  # a new rule gives new results: records of the old one stay apart
            cfg["bias_calibration_rule"] = CALIBRATION_RULE
        return cfg

    @property
    def calibrates_bias(self) -> bool:
        """Whether this job's compressed layers get bias calibration (``bench.bias_calibration``);
        the dense job has no compressed layer, so its key stays that of the baseline's job."""
        return (self.method != "dense" and not self.fit_only
                and bool((self.finetune or {}).get("calibrate_bias")))

    @property
    def borrows_pick(self) -> bool:
        """Whether this job takes the lr picked at another epoch count (the suite's tune_epochs)."""
        return (self.tune_epochs is not None and not self.fit_only
                and self.finetune.get("epochs") != self.tune_epochs)

    def __post_init__(self) -> None:
        self.key = config_key(self.config())

    @property
    def tune_key(self) -> str:
        """The key without the seed and the fine-tuning lr: the seeds of one (network, dataset,
        method, budget) share it, so an lr picked from ``lr_grid`` can be shared by them."""
        cfg = self.config()
        del cfg["seed"]
        cfg.pop("tune_epochs", None)
        if cfg["finetune"] is not None:
            picked = ("lr", "optimizer") if self.optimizer_grid else ("lr",)
            cfg["finetune"] = {k: v for k, v in cfg["finetune"].items() if k not in picked}
            if self.borrows_pick:
                cfg["finetune"]["epochs"] = self.tune_epochs
        return config_key(cfg)

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
    entries = _select_methods(suite, methods)
    nets = _select_networks(suite, networks)
    # a fit-only job never fine-tunes: one job, not one per fine-tuning setting
    lr_grid = [float(x) for x in suite["lr_grid"]] if suite.get("lr_grid") and not fit else None
    optimizer_grid = list(suite["optimizer_grid"]) if lr_grid and suite.get("optimizer_grid") else None
    lr_extend = int(suite["lr_extend"]) if lr_grid and suite.get("lr_extend") is not None else None
    jobs = []
    for network, layers in nets.items():
        rec = (suite.get("recipes") or {}).get(network) or {}
        train = check_recipe({**(suite.get("train") or {}), **(rec.get("train") or {})})
        finetune = check_recipe(_finetune_recipe(suite, network))
        epochs_list = (None if fit else network_epochs(suite, network)) or [None]
        for dataset in suite["datasets"]:
            for seed in suite.get("seeds") or [0]:
                for epochs in epochs_list:
                    ft = finetune if epochs is None else {**finetune, "epochs": epochs}
                    for e in entries:
                        for ratio, knob in _budgets(suite, e):
                            if fit and e["method"] == "dense":
                                continue
                            jobs.append(Job(suite["name"], network, dataset, list(layers), e["method"], e["label"],
                                            copy.deepcopy(e["options"]), ratio, knob, int(seed), train,
                                            ft, data_cfg, fit, lr_grid=lr_grid, optimizer_grid=optimizer_grid,
                                            lr_extend=lr_extend,
                                            budget_tolerance=suite.get("budget_tolerance"),
                                            factorize_time_cap_s=suite.get("factorize_time_cap_s"),
                                            job_time_limit_s=float(suite.get("job_time_limit_s")
                                                                   or DEFAULT_JOB_TIME_LIMIT_S),
                                            tune_epochs=suite.get("tune_epochs") if lr_grid else None))
    return prioritize(jobs, suite)


def network_epochs(suite: dict[str, Any], network: str) -> list[float] | None:
    """The fine-tuning epoch counts a network's jobs sweep: its recipe's ``finetune_epochs``
    (a network whose ranking settles sooner needs fewer), else the suite's."""
    rec = (suite.get("recipes") or {}).get(network) or {}
    return rec.get("finetune_epochs", suite.get("finetune_epochs"))


def prioritize(jobs: list[Job], suite: dict[str, Any]) -> list[Job]:
    """Jobs in the suite's ``priority`` order (stable: the expansion order within a stage);
    unchanged without one. Stages not listed come after the listed ones. Within ``seeds``,
    seed by seed, each in the order of the other stages. Sets ``Job.stage``."""
    prio = suite.get("priority")
    first = min(int(s) for s in suite.get("seeds") or [0])
    head = suite.get("headline_ratio")

    def own_stage(j: Job) -> str:
        if j.method == "dense":
            return "baselines"
        if head is not None and j.target_ratio is not None and math.isclose(j.target_ratio, float(head),
                                                                            rel_tol=1e-9):
            return "headline"
        return "budgets"

    own = {id(j): own_stage(j) for j in jobs}
    for j in jobs:
        j.stage = "seeds" if prio and "seeds" in prio and j.seed != first else own[id(j)]
    if not prio:
        return jobs
    order = list(prio) + [s for s in STAGES if s not in prio]
    inner = [s for s in order if s != "seeds"]

    def rank(j: Job) -> tuple:
        if j.stage != "seeds":
            return (order.index(j.stage), 0, 0)
        return (order.index("seeds"), j.seed, inner.index(own[id(j)]))

    return sorted(jobs, key=rank)


def _budgets(suite: dict[str, Any], entry: dict[str, Any]) -> list[tuple[float | None, Any]]:
    """(target ratio, knob) pairs of a method entry: dense once, fixed knobs, or the ratios."""
    if entry["method"] == "dense":
        return [(1.0, None)]
    if entry["knobs"] is not None:
        return [(None, k) for k in entry["knobs"]]
    return [(float(r), None) for r in suite.get("ratios") or []]


def _select_methods(suite: dict[str, Any], methods: list[str] | None) -> list[dict[str, Any]]:
    entries = [method_entry(e) for e in suite["methods"]]
    if not methods:
        return entries
    unknown = sorted(set(methods) - {e["method"] for e in entries} - {e["label"] for e in entries})
    if unknown:
        raise SuiteError(f"--methods {unknown} not in suite {suite['name']}; it has: "
                         f"{', '.join(e['label'] for e in entries)}")
    return [e for e in entries if e["method"] in methods or e["label"] in methods]


def _select_networks(suite: dict[str, Any], networks: list[str] | None) -> dict[str, list[str]]:
    nets = suite["networks"]
    if not networks:
        return nets
    unknown = sorted(set(networks) - set(nets))
    if unknown:
        raise SuiteError(f"--networks {unknown} not in suite {suite['name']}; it has: {', '.join(nets)}")
    return {n: nets[n] for n in networks}


def tuning_jobs(jobs) -> dict[str, str]:
    """Tune key -> key of the job that picks the lr for it: of the jobs with an ``lr_grid``
    sharing a tune key (same config but the seed), the one of the lowest seed (and, with a
    suite's tune_epochs, the one at that epoch count)."""
    tuner: dict[str, str] = {}
    for j in sorted(jobs, key=lambda j: (j.borrows_pick, j.seed)):
        if j.lr_grid:
            tuner.setdefault(j.tune_key, j.key)
    return tuner


def tuner_keys(jobs) -> set[str]:
    """Keys of the jobs that pick their lr from ``lr_grid`` (``tuning_jobs``)."""
    return set(tuning_jobs(jobs).values())

