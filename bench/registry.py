"""Name -> factory registries for methods, networks and datasets, plus plugin loading.

Public, stable entry points (plugin authors and external checks use them):
``register_method``, ``get_method``, ``method_names``, ``load_plugin``.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A flat name -> factory mapping with helpful errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or '(none)'}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


METHODS: Registry[type] = Registry("method")
NETWORKS: Registry[Callable[..., Any]] = Registry("network")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")

_builtin_methods_loaded = False


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_method("tt")`` makes ``get_method("tt")`` build it."""

    def wrap(cls: type) -> type:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return wrap


def register_network(name: str):
    return lambda fn: NETWORKS.add(name, fn)


def register_dataset(name: str):
    return lambda fn: DATASETS.add(name, fn)


def _load_builtin_methods() -> None:
    """Import every module of ``methods/`` (each registers itself) and installed plugins."""
    global _builtin_methods_loaded
    if _builtin_methods_loaded:
        return
    _builtin_methods_loaded = True
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    _load_entry_points()


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="tnbench.methods"):
        ep.load()


def load_plugin(spec: str) -> None:
    """Import a plugin given as a .py file path or a dotted import path; it registers itself."""
    _load_builtin_methods()
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise FileNotFoundError(f"plugin file not found: {spec}")
        mod_name = f"tnbench_plugin_{path.stem}"
        if mod_name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def method_names() -> list[str]:
    _load_builtin_methods()
    return METHODS.names()


def get_method(name: str, **options: Any):
    """Build the method registered as ``name`` with its options (a ``Compressor``)."""
    _load_builtin_methods()
    return METHODS.get(name)(**options)


def network_names() -> list[str]:
    import bench.models  # noqa: F401  (registers the networks)
    return NETWORKS.names()


def dataset_names() -> list[str]:
    from bench.data import register_loaders

    register_loaders()
    return DATASETS.names()
