"""Networks without memory: a suite's networks built on the meta device (shapes only, no
weights, no random numbers drawn), for validation, the cost model and the pre-run skips."""
from __future__ import annotations

import functools

from bench.suite_schema import SuiteError


def input_shape(dataset: str) -> tuple[tuple[int, int, int], int] | None:
    """(input shape, classes) of a dataset without reading it, from what it registered."""
    from bench.registry import dataset_spec

    spec = dataset_spec(dataset)
    return tuple(spec.shape), int(spec.classes)


@functools.lru_cache(maxsize=16)
def meta_network(net: str, dataset: str):
    """``untrained``, built once per (network, dataset): layer sizes for the cost model and
    the pre-run skips (never run; its parameters hold no memory)."""
    return untrained(net, dataset)


def untrained(net: str, dataset: str):
    import torch

    from bench.models import build_network

    shape = input_shape(dataset)
    if shape is None:
        return None
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return build_network(net, *shape)
    except Exception as e:  # noqa: BLE001 - a network that cannot take this input, said in one line
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise SuiteError(f"network {net} cannot be built for dataset {dataset} (input {shape[0]}, "
                         f"{shape[1]} classes): {why}") from None
