"""What "at chance" means, once: the tables mark a seed that collapsed to chance, and a seed
that borrowed the tuning seed's pick and collapsed tries the next pick (``bench.tuning``).
No torch here, so the reports stay light."""
from __future__ import annotations

import functools
import math

#: a run whose accuracy is within this many points of chance (100 / classes) has collapsed.
#: A network that predicts one class scores that class's share of the test set: on MNIST up to
#: 11.35 % (the digit 1), 1.35 points above chance, so a 1-point margin would miss it.
CHANCE_MARGIN = 1.5


def at_chance(acc: float, classes: int) -> bool:
    """Whether an accuracy (%) is within ``CHANCE_MARGIN`` points of chance (100 / classes)."""
    return near_chance(float(acc), 100.0 / classes)


def near_chance(acc: float, chance: float) -> bool:
    """``at_chance`` for a chance level (%) instead of a class count."""
    return abs(acc - chance) <= CHANCE_MARGIN


@functools.lru_cache(maxsize=None)
def chance_accuracy(dataset: str) -> float:
    """100 / classes (%) of a registered dataset; NaN for one the registry does not know (its
    runs are then never called collapsed)."""
    from bench.registry import UnknownNameError, dataset_spec  # loads the dataset modules: only when asked

    try:
        return 100.0 / dataset_spec(dataset).classes
    except (UnknownNameError, ImportError):
        return float("nan")


#: when a seed that borrowed the tuning seed's pick falls back on its next-best pick
#: (``protocol.fallback_when``; ``bench.tuning.borrowed``): ``chance`` (protocol v3) when its run
#: diverges or ends at chance on validation; ``half_gain`` also when it keeps less than half of
#: the tuning seed's validation gain over chance with that pick (LeNet-5 / Fashion-MNIST, v3:
#: adtn-interleaved seed 1 at 32x ended at 12.8 % where seed 0 reached 68.2 %, 2.8 points above
#: chance, so ``chance`` kept it)
FALLBACK_RULES = ("chance", "half_gain")


def needs_fallback(acc: float | None, chance: float, reference: float | None, rule: str = "chance") -> bool:
    """Whether a borrowed pick's run (validation accuracy ``acc``, %) is one the fallback rule
    replaces: no accuracy, at chance, or under ``half_gain`` below chance + (``reference`` -
    chance) / 2, ``reference`` being the tuning seed's validation accuracy with the same pick
    (None: unknown, only the chance test applies)."""
    if rule not in FALLBACK_RULES:
        raise ValueError(f"fallback rule {rule!r}; valid: {', '.join(FALLBACK_RULES)}")
    if acc is None or not math.isfinite(acc):
        return True
    if near_chance(acc, chance):
        return True
    return rule == "half_gain" and reference is not None and acc < chance + (reference - chance) / 2
