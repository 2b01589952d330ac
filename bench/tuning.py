"""Picking a method's fine-tuning optimizer and learning rate on the validation split.

The same rule for every gradient method (protocol v3):

* the grid is every optimizer of the suite's ``optimizer_grid`` (absent: the recipe's own)
  times every lr of ``lr_grid``;
* when an optimizer's best lr is at an edge of the values tried, the next value out (x3 above,
  /3 below) is tried too, up to ``lr_extend`` times, stopping when the pick becomes interior
  or the new value diverges or is worse: the grid is never what limits a method;
* the pick is the best validation accuracy (ties: the first optimizer listed, then the smaller
  lr); a value whose loss diverges loses, it does not fail the job.

Every value tried is in the record (``lr_tuning``). A pick is a float (the lr) when the suite
has no ``optimizer_grid`` — the records made before it keep their form — else
``{"optimizer": ..., "lr": ...}``.

The other seeds take the tuning seed's pick. One pick can suit seed 0 and still leave another
seed's run at chance (LeNet-5 under v3: 4 of 56 cells had one such seed, three of them ADTN).
With ``pick_fallbacks`` F, a seed whose run with the borrowed pick diverges or ends at chance on
its *validation* split tries the tuning seed's next-best picks, in the order of the tuning seed's
validation accuracy, up to F of them, from the same start; it keeps the first run that is not at
chance, else the best on validation. Test accuracy never decides; every run tried is in the
record (``fallbacks``). ``fallback_when: half_gain`` (``bench.chance.needs_fallback``) also
falls back from a run that keeps less than half of the tuning seed's validation gain over
chance with the same pick: a partial collapse that "at chance" misses.
"""
from __future__ import annotations

import copy
import math
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterable

EXTEND_FACTOR = 3.0


def apply_pick(recipe: dict[str, Any], pick: float | dict | None) -> dict[str, Any]:
    """The fine-tuning recipe with a pick (an lr, or an optimizer and lr) in place."""
    if pick is None:
        return recipe
    if isinstance(pick, dict):
        return {**recipe, **pick}
    return {**recipe, "lr": float(pick)}


def parse_label(label: str) -> float | dict:
    """The pick a ``val_acc`` label names ("0.01" or "adam@0.01"): ``_label``'s inverse."""
    opt, _, lr = label.rpartition("@")
    return float(lr) if not opt else {"optimizer": opt, "lr": float(lr)}


class MissingPick(RuntimeError):
    """A seed that reuses the tuning seed's pick reached fine-tuning with none to reuse."""


class RankedPicks(list):
    """The tuning seed's picks, best first, and the validation accuracy each reached there
    (``val_of``): what a borrowing seed's fallback rule compares its own run with."""

    def __init__(self, picks, val: dict[str, float] | None = None):
        super().__init__(picks)
        self.val = dict(val or {})

    def val_of(self, pick) -> float | None:
        return self.val.get(pick_label(pick))


def ranked_picks(tuning: dict[str, Any]) -> RankedPicks:
    """A tuning record's picks, best first: its pick, then every other value that did not
    diverge by validation accuracy (ties: the order tried). What a borrowing seed falls back on."""
    pick = tuning["pick"]
    val = {lab: acc for lab, acc in (tuning.get("val_acc") or {}).items() if acc is not None}
    others = sorted(((acc, i, parse_label(lab)) for i, (lab, acc) in enumerate(val.items())),
                    key=lambda t: (-t[0], t[1]))
    return RankedPicks([pick] + [p for _, _, p in others if p != pick], val)


def picks_started(tuning: dict[str, Any]) -> list:
    """The picks a reusing run started from, in order: the borrowed pick, then its fallbacks."""
    tried = tuning.get("fallbacks")
    return [t["pick"] for t in tried] if tried else [tuning.get("pick")]


def pick_changed(rec: dict[str, Any], tuning_rec: dict[str, Any]) -> bool:
    """Whether the reusing record ``rec`` started from other picks than ``tuning_rec`` ranks
    first now (both ok, both with an lr tuning record)."""
    mine, theirs = rec.get("lr_tuning"), tuning_rec.get("lr_tuning")
    if rec.get("status") != "ok" or tuning_rec.get("status") != "ok" or not mine or not theirs:
        return False
    started = picks_started(mine)
    return started != ranked_picks(theirs)[:len(started)]


def _best(tried: dict[float, float | None]) -> tuple[float, float] | None:
    """(lr, accuracy) of the best value that did not diverge (ties: the smaller lr), or None."""
    ok = {lr: a for lr, a in tried.items() if a is not None}
    if not ok:
        return None
    top = max(ok.values())
    return min(lr for lr, a in ok.items() if a == top), top


def _label(optimizer: str | None, lr: float) -> str:
    return repr(lr) if optimizer is None else f"{optimizer}@{lr!r}"


def search(run: Callable[[dict | float], tuple[float, Any]], lrs: list[float], optimizers: list[str] | None,
           extend: int = 0) -> tuple[Any, dict[str, Any]]:
    """Run the grid. ``run(pick)`` fine-tunes a fresh copy and returns (validation accuracy,
    whatever the caller keeps), raising FloatingPointError when the loss diverges. Returns the
    best run's kept value and the tuning record."""
    val_acc: dict[str, float] = {}
    diverged: list = []
    extended: list[str] = []
    best: tuple[float, Any, Any] | None = None
    edge_picks: list[str] = []
    for opt in (optimizers or [None]):
        tried: dict[float, float | None] = {}

        def attempt(lr: float, opt=opt, tried=tried) -> None:
            nonlocal best
            pick = float(lr) if opt is None else {"optimizer": opt, "lr": float(lr)}
            try:
                acc, kept = run(pick)
            except FloatingPointError:
                tried[lr] = None
                diverged.append(float(lr) if opt is None else _label(opt, lr))  # v2 records: floats
                return
            tried[lr] = acc
            val_acc[_label(opt, lr)] = acc
            if best is None or acc > best[0]:
                best = (acc, pick, kept)

        for lr in lrs:
            attempt(float(lr))
        for _ in range(max(0, int(extend))):
            if _best(tried) is None:
                break
            pick_lr, top = _best(tried)
            if pick_lr == max(tried) and len(tried) > 1 or len(tried) == 1:
                nxt = pick_lr * EXTEND_FACTOR
            elif pick_lr == min(tried):
                nxt = pick_lr / EXTEND_FACTOR
            else:
                break  # interior: the grid does not bind
            nxt = float(f"{nxt:.6g}")
            extended.append(_label(opt, nxt))
            attempt(nxt)
            if tried[nxt] is None or tried[nxt] <= top:
                break  # the next value out diverges or is worse: the pick stands
        final = _best(tried)
        if final is not None and len(tried) > 1 and final[0] in (min(tried), max(tried)):
            edge_picks.append(_label(opt, final[0]))  # the extensions ran out at an edge
    if best is None:
        raise FloatingPointError(f"fine-tuning diverged at every value of the grid "
                                 f"{[_label(o, lr) for o in (optimizers or [None]) for lr in lrs]}")
    acc, pick, kept = best
    rec: dict[str, Any] = {"grid": [float(x) for x in lrs], "pick": pick, "val_acc": val_acc, "tuned_here": True}
    if optimizers:
        rec["optimizers"] = list(optimizers)
    if diverged:
        rec["diverged"] = diverged
    if extend:
        rec["extend"] = int(extend)
        rec["extended"] = extended
    # an edge pick after the extensions: a value out of reach might have won
    rec["pick_at_edge"] = _label(pick.get("optimizer") if isinstance(pick, dict) else None,
                                 pick["lr"] if isinstance(pick, dict) else pick) in edge_picks
    return kept, rec


def _walk(runs: Iterable[tuple[Any, float | None, Any]], collapsed: Callable[[float, Any], bool]
          ) -> tuple[tuple[float, Any, Any] | None, list[dict], bool]:
    """The fallback rule, one place for ``borrowed`` (runs made as they are asked for) and
    ``replay_borrowed`` (runs already recorded): walk (pick, validation accuracy or None when
    it diverged, payload) in order, keep the best, stop at the first run not ``collapsed``.
    Returns (best as (acc, pick, payload) or None, the runs walked, whether it stopped)."""
    best, walked = None, []
    for pick, acc, payload in runs:
        walked.append({"pick": pick, "val_acc": acc})
        if acc is None:  # diverged: the next pick
            continue
        if best is None or acc > best[0]:
            best = (acc, pick, payload)
        if not collapsed(acc, pick):
            return best, walked, True
    return best, walked, False


def borrowed(finetune: Callable[[Any, Any], Any], evaluate_val: Callable[[Any], float], model, ranked: list,
             fallbacks: int, collapsed: Callable[[float, Any], bool]) -> tuple[Any, Any, Any, list[dict] | None]:
    """Fine-tune with the tuning seed's pick ``ranked[0]``; when that run diverges or its
    validation accuracy is ``collapsed(acc, pick)``, try ``ranked[1:]`` in order, up to
    ``fallbacks`` of them, each from a copy of the same start. Returns (model, context, pick
    kept, the runs tried or None when only the first ran)."""
    candidates = ranked[:1 + max(0, int(fallbacks))]
    if len(candidates) == 1:  # nothing to fall back on: a divergence fails the job, as it always did
        return model, finetune(model, candidates[0]), candidates[0], None
    start = copy.deepcopy(model)

    def runs():  # lazily: _walk stops asking once a run is kept
        for i, pick in enumerate(candidates):
            trial = model if i == 0 else copy.deepcopy(start)
            try:
                ctx = finetune(trial, pick)
            except FloatingPointError:
                yield pick, None, None
                continue
            yield pick, evaluate_val(trial), (trial, ctx)

    best, tried, _ = _walk(runs(), collapsed)
    if best is None:
        raise FloatingPointError(f"fine-tuning diverged with the tuning seed's pick and its {len(tried) - 1} "
                                 f"next-best ({[pick_label(t['pick']) for t in tried]})")
    _, pick, (trial, ctx) = best
    return trial, ctx, pick, (tried if len(tried) > 1 else None)


def replay_borrowed(tried: list[dict], candidates: int, collapsed: Callable[[float, Any], bool]
                    ) -> tuple[int, Any] | None:
    """``borrowed``'s rule replayed on runs already made (``tried``: its list, in order): (how many
    of them it would make, the pick it would keep), or None when it would go on past them. Says
    whether a record made under another fallback rule is the run this rule would make."""
    recorded = ((t["pick"], t["val_acc"] if t["val_acc"] is not None and math.isfinite(t["val_acc"]) else None, None)
                for t in tried[:candidates])
    best, walked, stopped = _walk(recorded, collapsed)
    if stopped:
        return len(walked), best[1]
    if len(tried) >= candidates and best is not None:
        return candidates, best[1]
    return None


def pick_label(pick) -> str:
    """The name of a pick in journals and records: ``sgd@0.01``, ``0.01`` (lr only), ``recipe``
    (None: the suite's recipe as it is, no grid)."""
    if pick is None:
        return "recipe"
    return _label(pick.get("optimizer"), pick["lr"]) if isinstance(pick, dict) else _label(None, pick)


def tuned(finetune: Callable[[Any, float | dict | None], Any], evaluate_val: Callable[[Any], float], model,
          lrs: list[float] | None, optimizers: list[str] | None, extend: int, pick: Any,
          fallbacks: int = 0, collapsed: Callable[[float, Any], bool] | None = None,
          journal=None) -> tuple[Any, Any, dict | None]:
    """Fine-tune ``model`` with the pick made on the tuning seed (``pick`` given: one pick, or
    the tuning seed's picks best first, ``ranked_picks``), or search the grid on copies and keep
    the best. ``finetune(model, pick)`` returns the method's context (its ``extras`` go into the
    record). ``fallbacks``/``collapsed``: ``borrowed``'s. ``journal``: a search's
    ``bench.trial_journal.TrialJournal`` (trials a killed sweep finished are taken from it).
    Returns (model, context, tuning record or None when there is no grid)."""
    if not lrs:
        return model, finetune(model, None), None
    if pick is not None:
        ranked = pick if isinstance(pick, list) else [pick]
        if not ranked:  # the tuning seed was skipped before fine-tuning; this seed was not
            raise MissingPick("the lr pick of its tuning seed is missing: that job was skipped, this one "
                              "reached fine-tuning")
        model, ctx, kept, tried = borrowed(finetune, evaluate_val, model, ranked,
                                           fallbacks if collapsed is not None else 0, collapsed or (lambda a, p: False))
        rec = {"grid": [float(x) for x in lrs], "pick": kept, "tuned_here": False}
        if optimizers:
            rec["optimizers"] = list(optimizers)
        if tried is not None:
            rec.update(borrowed_pick=ranked[0], fallbacks=tried)
        return model, ctx, rec

    if journal is None:
        def run(p):
            trial = copy.deepcopy(model)
            ctx = finetune(trial, p)
            return evaluate_val(trial), (trial, ctx)

        (trial, ctx), rec = search(run, lrs, optimizers, extend)
        return trial, ctx, rec
    return _journaled_search(finetune, evaluate_val, model, lrs, optimizers, extend, journal)


class _Journaled:
    """What ``search`` keeps for a trial taken from the journal: restored only if it wins."""

    def __init__(self, pick):
        self.pick = pick


def _journaled_search(finetune, evaluate_val, model, lrs, optimizers, extend, journal):
    from bench.baseline import weights_fingerprint

    journal.start_from(weights_fingerprint(model.state_dict()))
    resumed: dict[str, float] = {}

    def run(p):
        label = pick_label(p)
        done = journal.get(label)
        if done is not None:
            resumed[label] = done["seconds"]
            if done["val_acc"] is None:
                raise FloatingPointError(f"diverged ({label}, journal)")
            return done["val_acc"], _Journaled(p)
        journal.make_room(label)
        best = journal.best_accuracy()
        t0 = time.perf_counter()
        trial = copy.deepcopy(model)
        try:
            ctx = finetune(trial, p)
        except FloatingPointError:
            journal.put(label, None, time.perf_counter() - t0)
            raise
        acc = evaluate_val(trial)
        wins = best is None or acc > best  # search keeps the first best: so does the journal
        journal.put(label, acc, time.perf_counter() - t0, trial if wins else None,
                    getattr(ctx, "extras", None) if wins else None)
        return acc, (trial, ctx)

    kept, rec = search(run, lrs, optimizers, extend)
    if isinstance(kept, _Journaled):
        trial = copy.deepcopy(model)
        extras = journal.restore(pick_label(kept.pick), trial)
        if extras is None:  # weights not there: run that trial again (seeded: the same run)
            ctx = finetune(trial, kept.pick)
        else:
            ctx = SimpleNamespace(extras=extras)
        kept = (trial, ctx)
    if resumed:
        rec["resumed"] = resumed
    trial, ctx = kept
    return trial, ctx, rec
