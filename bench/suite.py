"""Suites: a YAML file (+ ``--set`` overrides) expanded into jobs.

One job = network x dataset x method entry x budget x seed (x fine-tuning epochs, when the
suite lists ``finetune_epochs``), where the budget is a target compression ratio of the
suite's layers, or a fixed knob when the method entry lists ``knobs``.

Every bad value is refused by ``validate`` (called by ``load_suite``) with a one-line
``SuiteError`` naming the value and the valid ones, before any job runs.

This module loads (name or path, ``base:`` chain, ``--set`` overrides), validates and returns
the frozen spec (``bench.spec.Suite``) every reader uses; the rest lives by job:
``bench.suite_schema`` (the keys), ``bench.suite_yaml`` (safe YAML), ``bench.suite_check``
(validation), ``bench.spec`` (the typed spec), ``bench.jobs`` (``Job``, ``expand``, the
priority order), ``bench.plan`` (the lr tuning plan). Their public names are re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.jobs import Job, expand, prioritize  # noqa: F401  (re-exported)
from bench.spec import MethodEntry, Protocol, Suite  # noqa: F401
from bench.plan import tuner_keys, tuning_jobs  # noqa: F401
from bench.meta_network import input_shape, meta_network  # noqa: F401
from bench.suite_check import _check_options, validate  # noqa: F401
from bench.suite_schema import (DATA_KEYS, DEFAULT_JOB_TIME_LIMIT_S, MERGED_KEYS, METHOD_ENTRY_KEYS,  # noqa: F401
                                PAPER_ROLES, PROTOCOL_KEYS, STAGES, SUITE_KEYS, SUITE_NAME, SUITES_DIR, SuiteError,
                                method_entry)
from bench.suite_yaml import parse_yaml, read_text  # noqa: F401


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(spec: str, overrides: list[str] | None = None) -> Suite:
    """Read a suite by name (bench/suites/NAME.yaml) or path, apply ``key.sub=value`` overrides,
    validate, and return its frozen spec."""
    path = Path(spec)
    if not (spec.endswith((".yaml", ".yml")) and path.is_file()):
        path = SUITES_DIR / f"{spec}.yaml"
        if not path.is_file():
            raise SuiteError(f"unknown suite {spec!r}; known: {', '.join(suite_names())} (or a path to a .yaml file)")
    suite = _drop_nulls(_read_with_base(path, seen=()))
    suite["name"] = path.stem
    for item in overrides or []:
        apply_override(suite, item)
    return validate(suite)


def _read_with_base(path: Path, seen: tuple) -> dict[str, Any]:
    """A suite's mapping, merged over its ``base`` suite's: keys of the child win, MERGED_KEYS
    are merged entry by entry (``_drop_nulls`` then deletes the keys set to null)."""
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


def _drop_nulls(suite: dict[str, Any]) -> dict[str, Any]:
    """Nulls mean "not set": a child deletes what its base set by writing null (at the top or
    in a merged mapping)."""
    out = {}
    for key, value in suite.items():
        if key in MERGED_KEYS and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        if value is not None:
            out[key] = value
    return out


def apply_override(suite: dict[str, Any], item: str) -> None:
    """``key.sub=value``: the value is YAML (``seeds=[0,1]``, ``finetune.lr=1e-3``)."""
    if "=" not in item:
        raise SuiteError(f"--set takes key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if keys[0] in PROTOCOL_KEYS:
        raise SuiteError(f"--set {dotted}: {keys[0]} belongs under protocol: --set protocol.{dotted}={raw}")
    if keys[0] not in SUITE_KEYS:
        raise SuiteError(f"--set: unknown key {keys[0]!r}; valid: {', '.join(sorted(SUITE_KEYS))}")
    if keys[0] == "base":  # the base chain is merged when the file is read, before any --set
        raise SuiteError(f"--set {dotted}: base is read from the suite file; write a suite file with "
                         f"base: NAME and pass it to --suite")
    if any(not k for k in keys):
        raise SuiteError(f"--set {dotted}: an empty key part; e.g. --set finetune.lr=0.01")
    value = parse_yaml(raw, f"--set {item}")
    node = suite
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise SuiteError(f"--set {dotted}: {k!r} is {node!r}, not a mapping")
    node[keys[-1]] = value


def current_keys(name: str, fit_only: bool = False, suites_dir=None) -> set[str] | None:
    """Keys of the jobs the suite ``name`` of ``suites_dir`` (default: the project's) defines
    now (fit-only jobs for a ``fit_runs.jsonl``), or None when there is no such suite."""
    path = Path(suites_dir or SUITES_DIR) / f"{name}.yaml"
    if not path.is_file():
        return None
    suite = load_suite(str(path))
    return {j.key for j in expand(suite, fit_only=suite.fit_only or fit_only)}
