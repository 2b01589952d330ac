"""What a suite file may say: its keys, their defaults and roles, and the small readers of a
suite mapping every other suite module shares (a method entry, a network's fine-tuning recipe
and epoch sweep). No YAML, no validation, no jobs: ``bench.suite`` loads, ``bench.suite_check``
validates, ``bench.jobs`` expands."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.errors import InputError
from bench.train import OPTIMIZERS

SUITES_DIR = Path(__file__).parent / "suites"
#: a suite's name as ``base:`` and ``reuse:`` take it: a file of the suites folder or a folder of
#: ``--out``, never a path (``..`` used to read records or suites from outside their roots)
SUITE_NAME = re.compile(r"\w[\w.-]*")
#: a job stopped after this long is recorded failed: a runaway recipe (``train.epochs=1e9``) or a
#: plugin that never returns must not hold a sweep forever; ten hours is far above any committed job
DEFAULT_JOB_TIME_LIMIT_S = 36_000.0
#: the ``protocol:`` block: what makes a comparison fair (the same seeds, epoch sweep and tuning
#: grid for every method). Inherited through ``base:`` as one unit, never key by key
PROTOCOL_KEYS = {
    "seeds": "seeds; each gets its own dense baseline (default [0])",
    "finetune_epochs": "fine-tuning epochs to sweep: each job runs once per value (sets finetune.epochs)",
    "network_epochs": "mapping network -> its own finetune_epochs (a network whose ranking settles sooner "
                      "sweeps fewer)",
    "lr_grid": "fine-tuning learning rates a method's lr is picked from (Job.lr_grid)",
    "optimizer_grid": f"fine-tuning optimizers picked from with lr_grid, each over every lr (among "
                      f"{', '.join(OPTIMIZERS)}; bench/tuning.py)",
    "lr_extend": "integer >= 0: times an optimizer's best lr at an edge of lr_grid tries the next value out "
                 "(x3 or /3; bench/tuning.py)",
    "pick_fallbacks": "integer 0..5: a seed that borrows the tuning seed's pick and diverges or ends at chance "
                      "on validation tries up to this many of the tuning seed's next-best picks (bench/tuning.py)",
    "fallback_when": "chance (default) or half_gain: when a seed with pick_fallbacks falls back; half_gain also "
                     "when its run keeps less than half of the tuning seed's validation gain over chance "
                     "(bench/chance.py)",
    "tune_epochs": "one of finetune_epochs: the epoch count whose lr pick (on the tuning seed) every epoch "
                   "count uses (default: each epoch count picks its own)",
    "reuse": "suites whose records in the same output a job with an equal key takes instead of running "
             "(copied with reused_from)",
}
SUITE_KEYS = {
    "description": "one line shown by --list",
    "datasets": "dataset names",
    "networks": "mapping network -> list of layer names to compress",
    "methods": "method names or {method, label, options, knobs}",
    "ratios": "target compression ratios of the compressed layers",
    "train": "recipe of the dense baseline",
    "finetune": "recipe of the fine-tuning after compression",
    "recipes": "per-network {train: ..., finetune: ...} overriding the suite's key by key",
    "data": "val_fraction, train_subset",
    "fit_only": "measure weight-space fit only (no fine-tuning)",
    "base": "another suite whose keys this one inherits and overrides (train/finetune/data key by key; "
            "null deletes an inherited key)",
    "paper": "figure roles this suite's results serve (see PAPER_ROLES); no effect on jobs",
    "protocol": "how every method is compared, one unit (a child suite's replaces its base's whole): "
                f"{', '.join(PROTOCOL_KEYS)}",
    "priority": "order of the job stages, a list among baselines, headline, headline-seeds, budgets, seeds, "
                "convergence"
                " (the order --time-budget spends its time in)",
    "headline_ratio": "the paper's headline budget, one of ratios (the 'headline' priority stage)",
    "budget_tolerance": "factor >= 1: a method whose smallest size is more than this over a budget is "
                        "recorded skipped there (default: it runs at its smallest size)",
    "factorize_time_cap_s": "seconds: a job whose calibrated factorisation estimate exceeds this is "
                            "recorded skipped (needs a calibration, bench/cost.py)",
    "job_time_limit_s": f"seconds a job may run (its baseline not counted) before it is stopped and "
                        f"recorded failed (default {DEFAULT_JOB_TIME_LIMIT_S:g})",
}
#: priority stages (``priority: [baselines, headline, headline-seeds, budgets, seeds, convergence]``):
#: the dense jobs, the headline budget of every method, the further seeds' baselines and headline
#: jobs (only where listed), the other budgets, every (other) job of the seeds after the first (the
#: lowest seed, which is the one that tunes the lr), and those seeds' runs at fine-tuning counts
#: shorter than the longest (``bench.jobs.prioritize``)
STAGES = ("baselines", "headline", "headline-seeds", "budgets", "seeds", "convergence")
#: keys a child suite overrides entry by entry (``finetune: {epochs: 5}`` keeps the base's lr);
#: every other key it replaces whole (``networks: {fc2: [...]}`` drops the base's other networks)
MERGED_KEYS = ("train", "finetune", "data")
METHOD_ENTRY_KEYS = {"method", "label", "options", "knobs"}
DATA_KEYS = {"val_fraction": 0.1, "train_subset": None}
#: the paper's figures a suite can feed (``paper: [accuracy, fit]``)
PAPER_ROLES = ("accuracy", "fit", "cost", "headline", "depth", "order", "convergence", "equal-budget")


class SuiteError(InputError, ValueError):
    """A suite file or override that does not make sense; the message says what is valid."""


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
    label = entry["method"] if entry.get("label") is None else entry["label"]  # '' is refused, not "unset"
    return {"method": entry["method"], "label": label, "options": options, "knobs": knobs}
