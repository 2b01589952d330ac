"""``validate``: every bad key or value of a suite refused with a one-line ``SuiteError``
naming it and the valid ones, before any job runs; and the untrained networks on the meta
device it (and the cost model) reads layer names and sizes from."""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

from bench.chance import FALLBACK_RULES
from bench.meta_network import input_shape, meta_network
from bench.registry import (DATASETS, METHODS, NETWORKS, dataset_names, is_reference, method_names,
                            network_names)
from bench.spec import Suite, thaw
from bench.suite_schema import (DATA_KEYS, PAPER_ROLES, PROTOCOL_KEYS, STAGES, SUITE_KEYS, SUITE_NAME, SuiteError,
                                method_entry)
from bench.train import OPTIMIZERS, RECIPE_DEFAULTS, check_recipe


def validate(suite: dict[str, Any]) -> Suite:
    """Refuse any bad key or value with a one-line SuiteError naming it and the valid ones;
    the suite's spec once every value has its type. Checks that combine values (a network's
    layers and recipe, a tune epoch within its sweep) read the spec, so each rule (a network's
    recipe, its epoch sweep) is written once, in ``bench.spec``."""
    moved = sorted(map(str, set(suite) & set(PROTOCOL_KEYS)))
    if moved:
        raise SuiteError(f"suite {suite['name']}: {', '.join(moved)} belong(s) under protocol: "
                         f"(protocol: {{{moved[0]}: ...}}; on the command line --set protocol.{moved[0]}=...)")
    bad = sorted(map(str, set(suite) - set(SUITE_KEYS) - {"name"}))
    if bad:
        raise SuiteError(f"suite {suite['name']}: unknown key(s) {bad}; valid: {', '.join(sorted(SUITE_KEYS))}")
    _check_names(suite)
    _check_lists(suite, TOP_LIST_KEYS)
    _check_protocol(suite)
    _check_recipes(suite)
    _check_data(suite)
    if suite.get("fit_only") is not None and not isinstance(suite["fit_only"], bool):
        raise SuiteError(f"fit_only {suite['fit_only']!r}: expected true or false")
    _check_priority(suite)
    spec = Suite.build(suite)
    _check_layers(spec)
    _check_sizes(spec)
    _check_tune_epochs(spec)
    _check_warmup(spec)
    return spec


def _check_protocol(suite: dict[str, Any]) -> None:
    """The protocol block: a mapping of PROTOCOL_KEYS whose lists are valid, with per-network
    epoch sweeps for networks of the suite."""
    proto = _sub_mapping(suite, "protocol", PROTOCOL_KEYS)
    if proto is None:
        return
    _check_lists(proto, PROTOCOL_LIST_KEYS, "protocol.")
    own = proto.get("network_epochs")
    if own is not None and not isinstance(own, dict):
        raise SuiteError(f"protocol.network_epochs {own!r}: expected a mapping network -> list of epochs, "
                         "e.g. {lenet5: [1]}")
    for net, epochs in (own or {}).items():
        if not isinstance(net, str) or net not in NETWORKS:  # a child suite may leave the network out
            raise SuiteError(f"protocol.network_epochs: unknown network {net!r}; known: {', '.join(network_names())}")
        _check_lists({"finetune_epochs": epochs}, {"finetune_epochs": PROTOCOL_LIST_KEYS["finetune_epochs"]},
                     f"protocol.network_epochs.{net}.")
    _check_grid_and_reuse(suite, proto)


def _check_warmup(spec: Suite) -> None:
    """A warm-up shorter than the run it warms: ``warmup_epochs`` at or past a run's epochs
    would leave the whole run ramping up (train.py clips it to all steps but one), under a key
    that says otherwise."""
    for net in spec.networks:
        for part in ("train", "finetune"):
            recipe = spec.recipe(part, net)
            warm = recipe.get("warmup_epochs") or 0
            runs = [recipe.get("epochs", RECIPE_DEFAULTS["epochs"])]
            if part == "finetune" and spec.protocol.epochs(net):
                runs = list(spec.protocol.epochs(net))
            for epochs in runs:
                if warm and epochs and warm >= epochs:
                    raise SuiteError(f"{part}.warmup_epochs {warm!r} ({net}): not shorter than the run it warms "
                                     f"up ({epochs!r} epochs); give warmup_epochs < epochs")


def _check_tune_epochs(spec: Suite) -> None:
    """tune_epochs is one of each network's finetune_epochs, in a suite with an lr_grid."""
    te = spec.protocol.tune_epochs
    for net in spec.networks if te is not None else []:
        sweep = spec.protocol.epochs(net)
        if not sweep or te not in sweep or not spec.protocol.lr_grid:
            have = "no protocol.finetune_epochs sweep" if not sweep else f"finetune_epochs {list(sweep)}"
            raise SuiteError(f"protocol.tune_epochs {te!r}: expected one of the network's finetune_epochs, in a suite "
                             f"with an lr_grid; network {net} has {have}"
                             f"{'' if spec.protocol.lr_grid else ' and the suite no lr_grid'}")


def _check_grid_and_reuse(suite: dict[str, Any], proto: dict[str, Any]) -> None:
    """optimizer_grid, lr_extend and pick_fallbacks need an lr_grid, fallback_when needs
    pick_fallbacks; reuse names other suites."""
    for key in ("optimizer_grid", "lr_extend", "pick_fallbacks"):
        if proto.get(key) is not None and not proto.get("lr_grid"):
            raise SuiteError(f"protocol.{key} {proto[key]!r}: needs an lr_grid to extend, cross with or fall back on")
    for key in ("lr_extend", "pick_fallbacks"):
        n = proto.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 5):
            raise SuiteError(f"protocol.{key} {n!r}: expected an integer in 0..5")
    when = proto.get("fallback_when")
    if when is not None:
        if when not in FALLBACK_RULES:
            raise SuiteError(f"protocol.fallback_when {when!r}; valid: {', '.join(FALLBACK_RULES)}")
        if proto.get("pick_fallbacks") is None:
            raise SuiteError(f"protocol.fallback_when {when!r}: needs pick_fallbacks (the picks to fall back on)")
    reuse = proto.get("reuse")
    if reuse is None:
        return
    if (not isinstance(reuse, list) or not reuse
            or any(not isinstance(r, str) or not SUITE_NAME.fullmatch(r) or r == suite["name"] for r in reuse)):
        raise SuiteError(f"protocol.reuse {reuse!r}: expected a list of other suites' names (folders of --out, "
                         "no paths), e.g. [mnist]")
    _no_repeats(reuse, "protocol.reuse")


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
        for needs_head in ("headline", "headline-seeds"):
            if needs_head in prio and suite.get("headline_ratio") is None:
                raise SuiteError(f"priority lists {needs_head!r} but the suite has no headline_ratio")
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
    _no_repeats(datasets, "datasets")
    if not isinstance(nets, dict):
        raise SuiteError(f"networks {nets!r}: expected a mapping network -> list of its layers to compress, "
                         "e.g. {fc2: [fc1, fc2]}")
    for n, layers in nets.items():
        if not isinstance(n, str) or n not in NETWORKS:
            raise SuiteError(f"unknown network {n!r}; known: {', '.join(network_names())}")
        if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
            raise SuiteError(f"networks.{n} {layers!r}: expected a non-empty list of layer names, e.g. [fc1]")
        _no_repeats(layers, f"networks.{n}")
    if not isinstance(suite["methods"], list):
        raise SuiteError(f"methods {suite['methods']!r}: expected a list of method names or "
                         "{method, label, options, knobs} entries")
    labels: set[str] = set()
    for entry in suite["methods"]:
        m = method_entry(entry)
        if not isinstance(m["method"], str) or m["method"] not in METHODS:
            raise SuiteError(f"unknown method {m['method']!r}; known: {', '.join(method_names())}")
        _check_label(m)
        if m["label"] in labels:
            raise SuiteError(f"method {m['label']!r} is listed twice; give one entry a different label")
        labels.add(m["label"])
        if m["knobs"] is not None:
            _no_repeats(m["knobs"], f"method {m['label']!r} knobs")  # one key, run twice
        _check_options(m)


def _check_label(m: dict[str, Any]) -> None:
    """A label names the method's rows, plots and ``--methods`` selections: a plain word, and
    never another method's name (``{method: tt, label: dense}`` would be taken for the dense
    reference, ``label: svd`` would answer ``--methods svd``)."""
    label = m["label"]
    if not isinstance(label, str) or not SUITE_NAME.fullmatch(label):
        raise SuiteError(f"method {m['method']!r}: label {label!r}: expected a word of letters, digits, "
                         "'_', '.' or '-', e.g. tt-paired")
    if label != m["method"] and is_reference(m["method"]):
        raise SuiteError(f"method {m['method']!r}: label {label!r}: the reference keeps its own name "
                         "(tables and verdicts find it by it)")
    if label != m["method"] and label in METHODS:
        raise SuiteError(f"method {m['method']!r}: label {label!r} is the name of another method; "
                         f"choose another, e.g. {m['method']}-{label}")


def _no_repeats(values: list, where: str) -> None:
    dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if dup is not None:
        raise SuiteError(f"{where}: {dup!r} is listed twice in {values!r}")


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
TOP_LIST_KEYS = {
    # a ratio below 1 would ask a compressor for more parameters than the dense layers hold
    "ratios": (lambda v: _real(v) and v >= 1, "finite numbers >= 1", "[2, 8, 32]"),
    "paper": (lambda v: isinstance(v, str) and v in PAPER_ROLES, f"figure roles among {', '.join(PAPER_ROLES)}",
              "[accuracy, fit]"),
}
PROTOCOL_LIST_KEYS = {
    "seeds": (_seed, "integers in 0..4294967295", "[0, 1]"),
    "finetune_epochs": (lambda v: _real(v) and v > 0, "finite numbers > 0", "[1, 3]"),
    "lr_grid": (lambda v: _real(v) and v > 0, "finite numbers > 0", "[0.003, 0.01, 0.03]"),
    "optimizer_grid": (lambda v: isinstance(v, str) and v in OPTIMIZERS, f"optimizers among {', '.join(OPTIMIZERS)}",
                       "[sgd, adam]"),
}


def _check_lists(suite: dict[str, Any], keys: dict, where: str = "") -> None:
    """Each list key, when given, is a non-empty list of valid, distinct values."""
    for key, (ok, what, example) in keys.items():
        values = suite.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{where}{key} {values!r}: expected a non-empty list of {what}, e.g. {example}")
        for v in values:
            if not ok(v):
                raise SuiteError(f"{where}{key}: bad value {v!r}; expected a list of {what}, e.g. {example}")
        _no_repeats(values, f"{where}{key}")


def _check_recipes(suite: dict[str, Any]) -> None:
    """train / finetune and every per-network override of them (types and ranges)."""
    recipes = suite.get("recipes") or {}
    if not isinstance(recipes, dict):
        raise SuiteError(f"recipes {recipes!r}: expected a mapping network -> {{train: ..., finetune: ...}}")
    for net, rec in recipes.items():
        if not isinstance(net, str) or net not in NETWORKS:
            raise SuiteError(f"recipes: unknown network {net!r}; known: {', '.join(network_names())}")
        if rec is not None and (not isinstance(rec, dict) or set(rec) - {"train", "finetune"}):
            raise SuiteError(f"recipes.{net} {rec!r}: expected a mapping with keys train, finetune "
                             "(a network's own epoch sweep is protocol.network_epochs)")
    try:
        for part in ("train", "finetune"):
            base = {} if suite.get(part) is None else suite[part]
            wheres = [(part, base)] + [(f"recipes.{net}.{part}", {**base, **((rec or {}).get(part) or {})})
                                       for net, rec in recipes.items()]
            for where, recipe in wheres:
                full = check_recipe(recipe, where)
                if part == "train" and full["epochs"] == 0:
                    # fine-tuning may be skipped (epochs 0), the baseline may not: every method
                    # would then compress a random network and the table would not say so
                    raise ValueError(f"{where}.epochs 0: the dense baseline must train; give epochs > 0 "
                                     "(fractions allowed)")
    except ValueError as e:
        raise SuiteError(str(e)) from None


def _sub_mapping(suite: dict[str, Any], key: str, known) -> dict[str, Any] | None:
    """``suite[key]`` when given: a mapping whose keys are all ``known``."""
    sub = suite.get(key)
    if sub is None:
        return None
    if not isinstance(sub, dict):
        raise SuiteError(f"{key} {sub!r}: expected a mapping with keys among {', '.join(known)}")
    bad = sorted(map(str, set(sub) - set(known)))
    if bad:
        raise SuiteError(f"{key}: unknown key(s) {bad}; valid: {', '.join(known)}")
    return sub


def _check_data(suite: dict[str, Any]) -> None:
    from bench.data import val_count

    data = _sub_mapping(suite, "data", DATA_KEYS)
    if data is None:
        return
    vf = data.get("val_fraction", DATA_KEYS["val_fraction"])
    if not (_real(vf) and 0 <= vf < 1):
        raise SuiteError(f"data.val_fraction {vf!r}: expected a number in [0, 1)")
    sub = data.get("train_subset")
    if sub is not None and not (isinstance(sub, numbers.Integral) and not isinstance(sub, bool) and sub >= 1):
        raise SuiteError(f"data.train_subset {sub!r}: expected an integer >= 1 (or null: the whole training set)")
    for name in suite["datasets"] if sub is not None else []:
        sizes = DATASETS.get(name).sizes  # a subset as large as the split is the whole split under another key
        n_train = None if sizes is None else sizes[0] - val_count(sizes[0], vf)
        if n_train is not None and sub >= n_train:
            raise SuiteError(f"data.train_subset {sub!r}: {name} has {n_train:,} training images after the "
                             f"validation split; give fewer, or null for all of them")


def _check_layers(spec: Suite) -> None:
    """Every target layer exists in its network, built (untrained, on the meta device: no
    memory, no random numbers drawn) for every dataset of the suite, and is Linear/Conv2d (what
    the methods replace)."""
    from torch import nn

    for net, layers in spec.networks.items():
        for dataset in spec.datasets:
            model = meta_network(net, dataset)
            if model is None:
                continue
            names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            for name in layers:
                if name not in names:
                    raise SuiteError(f"networks.{net}: {net} (on {dataset}) has no Linear/Conv2d layer {name!r}; "
                                     f"its layers: {', '.join(names)}")
            if not spec.fit_only and spec.recipe("finetune", net).get("scope") == "after_frozen_prefix":
                from bench.prefix import PrefixError, check_cuttable
                try:
                    check_cuttable(model, list(layers), input_shape(dataset)[0])
                except PrefixError as e:
                    raise SuiteError(f"networks.{net} (on {dataset}): {e}") from None


def _check_sizes(spec: Suite) -> None:
    """Every fixed knob of a method entry (``knobs: [...]``) sizes every target layer now, on
    the untrained network, so a knob the method does not take (svd rank 0 or above full rank,
    tt rank nan, adtn depth 1.5) is refused before any baseline trains instead of failing its
    jobs after. A layer the method does not apply to (its ``knobs`` raise ``CompressionError``)
    stays a skipped record at run time; a method whose ``knobs`` cannot run on the untrained
    network (a plugin that reads the weights) is left to the run."""
    for net, layers in spec.networks.items():
        for dataset in spec.datasets:
            model = meta_network(net, dataset)
            if model is None:
                continue
            modules = dict(model.named_modules())
            for entry in (e for e in spec.methods if e.knobs is not None):
                method = METHODS.get(entry.method)(**thaw(entry.options))
                for name in layers:
                    try:
                        method.knobs(modules[name])
                    except Exception:  # noqa: BLE001 - not applicable here, or not plannable untrained
                        continue
                    for knob in thaw(entry.knobs):
                        _check_size(method, modules[name], knob, f"method {entry.label!r} on {net}.{name} ({dataset})")


def _check_size(method, layer, knob, where: str) -> None:
    """``method.layer_params(layer, knob)`` is a whole number of parameters (0 is a size: prune
    keeping no weight of a layer without bias)."""
    try:
        size = method.layer_params(layer, knob)
    except Exception as e:  # noqa: BLE001 - CompressionError for a bad knob, anything from a plugin
        raise SuiteError(f"{where}: {method.knob_name} {knob!r}: {_first_line(e)}") from None
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise SuiteError(f"{where}: {method.knob_name} {knob!r} gives {size!r} parameters; expected a "
                         "whole number >= 0")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
