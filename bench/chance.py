"""What "at chance" means, once: the tables mark a seed that collapsed to chance, and a seed
that borrowed the tuning seed's pick and collapsed tries the next pick (``bench.tuning``).
No torch here, so the reports stay light."""
from __future__ import annotations

import functools

#: a run whose accuracy is within this many points of chance (100 / classes) has collapsed.
#: A network that predicts one class scores that class's share of the test set: on MNIST up to
#: 11.35 % (the digit 1), 1.35 points above chance, so a 1-point margin would miss it.
CHANCE_MARGIN = 1.5


def at_chance(acc: float, classes: int) -> bool:
    """Whether an accuracy (%) is within ``CHANCE_MARGIN`` points of chance (100 / classes)."""
    return abs(float(acc) - 100.0 / classes) <= CHANCE_MARGIN


@functools.lru_cache(maxsize=None)
def chance_accuracy(dataset: str) -> float:
    """100 / classes (%) of a registered dataset; NaN for one the registry does not know (its
    runs are then never called collapsed)."""
    from bench.registry import UnknownNameError, dataset_spec  # loads the dataset modules: only when asked

    try:
        return 100.0 / dataset_spec(dataset).classes
    except (UnknownNameError, ImportError):
        return float("nan")
