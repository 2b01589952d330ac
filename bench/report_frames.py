"""Which records a table counts, and as what: the latest record per job of one dense baseline,
reference (dense) rows, ok and failed seeds with their accuracy, budgets that gave one
allocation folded into one, the protocol's fine-tuning length.

Why a module of its own (issue #22): every table (``bench.report_tables``,
``bench.report_equal_budget``) starts from these frames; here is the one way they are cut.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import latest_by_key, read_records
from bench.registry import is_reference

UNKNOWN_BASELINE = "unknown"


def records_frame(path: Path, keys: set[str] | None = None, all_baselines: bool = False) -> pd.DataFrame:
    """Latest record per job key, as a frame in file order; with ``keys``, only those jobs (a
    suite's current jobs, so records of an edited suite's old configurations stay out). Records
    of an older dense baseline are left out unless ``all_baselines`` (see ``baseline_split``)."""
    records = read_records(path)
    latest = latest_by_key(records, where=path)
    position = {id(r): i for i, r in enumerate(records)}  # where each kept record stands in the file
    rows = sorted((r for k, r in latest.items() if keys is None or k in keys), key=lambda r: position[id(r)])
    frame = pd.DataFrame(rows)
    if len(frame) and "options" in frame:
        # one label must mean one configuration: set apart rows of other option sets
        opts = frame.options.map(lambda o: ",".join(f"{k}={v}" for k, v in sorted(o.items()))
                                 if isinstance(o, dict) else "")
        for label, idx in frame.groupby("label").groups.items():
            if opts[idx].nunique() > 1:
                frame.loc[idx, "label"] = [f"{label} [{o}]" for o in opts[idx]]
    return frame if all_baselines else baseline_split(frame)[0]


def suite_records_frame(path: Path, name: str, suites_dir=None, fit_only: bool = False) -> pd.DataFrame:
    """``records_frame`` of the jobs suite ``name`` defines now (``bench.suite.current_keys``), as
    the suite report reads them: a record made under an older definition (another recipe, no
    ``pick_fallbacks``) stays in the file as history and out of figures and claims. When no
    record is a current job (no such suite, or records made by another suite of that name, such
    as a test's stand-in) every record is read."""
    from bench.suite import current_keys  # torch: only when a suite is read this way

    keys = current_keys(name, fit_only=fit_only, suites_dir=suites_dir)
    frame = records_frame(path, keys)
    return records_frame(path) if keys is not None and frame.empty else frame


def baseline_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, left out): measurements of one (network, dataset, seed) must come from one dense
    baseline, the one of its latest ``ok`` record (frame order = file order); a seed that
    reused a pick must have started from its tuning seed's current pick (``stale_picks``). Records without a
    ``baseline_fingerprint`` count as one unknown fingerprint; records not ``ok`` carry no
    measurement and are always kept."""
    if df.empty or "network" not in df:
        return df, df.iloc[0:0]
    fp = (df["baseline_fingerprint"] if "baseline_fingerprint" in df else pd.Series(index=df.index, dtype=object))
    fp = fp.where(fp.notna(), UNKNOWN_BASELINE).astype(str)
    ok = df.status == "ok"
    drop = pd.Series(False, index=df.index)
    for _, idx in df[ok].groupby(["network", "dataset", "seed"], sort=False).groups.items():
        current = fp[idx[-1]]
        drop[idx] = fp[idx] != current
    drop |= stale_picks(df, drop)
    return df[~drop], df[drop]


def stale_picks(df: pd.DataFrame, dropped: pd.Series) -> pd.Series:
    """Rows of seeds that reused their tuning seed's lr pick (``lr_tuning.tuned_here`` false)
    whose tuning row is among ``dropped`` (made on an older baseline) or now ranks another pick
    first than the one that seed started from (``bench.tuning.pick_changed``): measurements of a
    pick the protocol no longer makes, left out as ``bench/stale.py`` runs them again."""
    from bench.tuning import pick_changed

    stale = pd.Series(False, index=df.index)
    if "lr_tuning" not in df or "tune_key" not in df:
        return stale
    rows = list(zip(df.index, df.to_dict("records")))
    tuner = {r["tune_key"]: (i, r) for i, r in rows  # tune key -> its latest tuning row
             if r.get("status") == "ok" and isinstance(r.get("lr_tuning"), dict) and r["lr_tuning"].get("tuned_here")}
    for i, r in rows:
        if r.get("tune_key") in tuner and isinstance(r.get("lr_tuning"), dict) and not r["lr_tuning"].get("tuned_here"):
            t, tuning_row = tuner[r["tune_key"]]
            stale[i] = bool(dropped[t]) or pick_changed(r, tuning_row)
    return stale


def budget_order(b: str) -> float:
    try:
        return float(b[1:]) if b.startswith("x") else 1e12 + float(b.split("=", 1)[1])
    except ValueError:
        return math.inf


def _knobs_id(r) -> str | None:
    knobs = r.get("knobs")
    if not isinstance(knobs, dict):
        return None
    return json.dumps(knobs, sort_keys=True, default=str) + f"|{r.get('params_compressed_layers')}"


def fold_budgets(ok: pd.DataFrame) -> pd.DataFrame:
    """Budgets that give the same allocation as a smaller budget (``same_as`` records, or the
    same knobs and parameters on every seed) are one measurement: keep the smallest budget's rows,
    drop the others, and list the folded budgets in a ``folded`` column ("" when none)."""
    if ok.empty:
        return ok.assign(folded="")
    ok = ok.copy()
    ok["folded"] = ""
    parent = {k: k for k in ok.key}

    def find(k):
        while parent[k] != k:
            k = parent[k]
        return k

    for _, g in ok.groupby(["network", "dataset", "label", "seed"], sort=False):
        rows = g.to_dict("records")
        by_id: dict[str, str] = {}
        for r in rows:
            ref = r.get("same_as")
            if isinstance(ref, str) and ref in parent:
                parent[find(r["key"])] = find(ref)
            kid = _knobs_id(r)
            if kid is not None:
                if kid in by_id:
                    parent[find(r["key"])] = find(by_id[kid])
                else:
                    by_id[kid] = r["key"]
    ok["_alloc"] = ok.key.map(find)
    keep = pd.Series(True, index=ok.index)
    for _, g in ok.groupby(["network", "dataset", "label"], sort=False):
        sig = {b: tuple(sorted(zip(h.seed, h._alloc))) for b, h in g.groupby("budget")}
        seen: dict[tuple, str] = {}
        for b in sorted(sig, key=budget_order):
            if sig[b] in seen:
                keep[g.index[g.budget == b]] = False
                first = g.index[g.budget == seen[sig[b]]]
                ok.loc[first, "folded"] = [", ".join(filter(None, [f, b])) for f in ok.loc[first, "folded"]]
            else:
                seen[sig[b]] = b
    return ok[keep].drop(columns="_alloc")


def reference_rows(df: pd.DataFrame) -> pd.Series:
    """Boolean mask of ``df``'s reference rows (dense, ``bench.registry.is_reference``): the
    row the methods are measured against, kept out of their rankings and curves."""
    return df.method.map(is_reference).astype(bool)


def seed_frames(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ok, failed) records, each with ``acc`` (dense: its baseline's). A seed that ran but gave
    no accuracy (status failed, or ok with a non-finite one) is failed: it must be counted, not
    dropped. Skipped jobs never ran and in-flight ones have not finished: neither."""
    if df.empty or "status" not in df:
        return pd.DataFrame(), pd.DataFrame()
    ran = df[df.status.isin(["ok", "failed"])].copy()
    nan = pd.Series(np.nan, index=ran.index)
    after = pd.to_numeric(ran.get("acc_after_finetune", nan), errors="coerce")
    dense = pd.to_numeric(ran.get("acc_dense", nan), errors="coerce")
    ran["acc"] = after.where(~reference_rows(ran), dense)
    good = (ran.status == "ok") & np.isfinite(ran.acc)
    return ran[good], ran[~good]


def ok_with_acc(df: pd.DataFrame) -> pd.DataFrame:
    return seed_frames(df)[0]


def finetune_epochs(df: pd.DataFrame) -> pd.Series:
    """Each record's fine-tuning epoch count (NaN where it has no recipe)."""
    return df.finetune.map(lambda f: f.get("epochs") if isinstance(f, dict) else None).astype(float)


def longest_finetune(df: pd.DataFrame) -> pd.DataFrame:
    """The records at each (network, dataset)'s longest fine-tuning epoch count, plus those
    without a recipe: a suite that sweeps ``finetune_epochs`` reports its tables at the
    protocol's count (the longest); the shorter runs are convergence evidence."""
    if df.empty or "finetune" not in df:
        return df
    epochs = finetune_epochs(df)
    longest = epochs.groupby([df.network, df.dataset]).transform("max")
    return df[epochs.isna() | (epochs == longest)]
