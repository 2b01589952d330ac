"""Name -> factory registries for methods, networks and datasets, plus plugin loading.

A leaf module: it imports none of its clients at import time. Each registry knows the package
that registers its built-ins (``methods``, ``bench.models``, ``bench.data``) and imports it on
the first lookup, so ``"digits" in DATASETS`` or ``METHODS.get("tt")`` work without listing
names first. Installed packages add methods through the entry-point group ``tnbench.methods``.

Public, stable entry points (plugin authors and external checks use them):
``register_method``, ``register_dataset``, ``get_method``, ``method_names``, ``is_reference``,
``dataset_spec``, ``load_plugin``, ``PluginError``.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from bench.errors import InputError

T = TypeVar("T")


class UnknownNameError(InputError, KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(InputError, ImportError):
    """A plugin that cannot be loaded (missing, syntax error, raises on import, name clash)."""


class Registry(Generic[T]):
    """A flat name -> item mapping with helpful errors; ``discover`` (called once, on the first
    lookup) imports the modules that register the built-in items."""

    def __init__(self, kind: str, discover: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._discover = discover
        self._discovered = discover is None

    def _ensure(self) -> None:
        if not self._discovered:
            self._discovered = True  # first: discovery registers through add(), which must not recurse
            self._discover()

    def add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        self._ensure()
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or '(none)'}")
        return self._items[name]

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._items


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's loader and what a network built for it needs to know without the data."""

    loader: Callable[..., Any]
    shape: tuple[int, int, int]
    classes: int
    #: (train, test) images of the full dataset: the cost model sizes epochs from it; None = unknown
    sizes: tuple[int, int] | None = None


def _discover_methods() -> None:
    """Every module or package of ``methods/`` (each registers itself), then installed plugins."""
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="tnbench.methods"):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken installed plugin says which one
            raise PluginError(f"installed plugin {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(e).__name__}: {e}") from e


def _discover_networks() -> None:
    importlib.import_module("bench.models")


def _discover_datasets() -> None:
    importlib.import_module("bench.data").register_loaders()


METHODS: Registry[type] = Registry("method", _discover_methods)
NETWORKS: Registry[Callable[..., Any]] = Registry("network", _discover_networks)
DATASETS: Registry[DatasetSpec] = Registry("dataset", _discover_datasets)


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_method("tt")`` makes ``get_method("tt")`` build it."""

    def wrap(cls: type) -> type:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return wrap


def register_network(name: str):
    return lambda fn: NETWORKS.add(name, fn)


def register_dataset(name: str, shape: tuple[int, int, int], classes: int, sizes: tuple[int, int] | None = None):
    """Decorator of a loader ``fn(data_dir, download) -> RawDataset``; ``shape`` (C, H, W),
    ``classes`` and ``sizes`` (train, test images) let dry runs, checks and the cost model work
    without reading the data."""
    sizes = None if sizes is None else (int(sizes[0]), int(sizes[1]))
    return lambda fn: DATASETS.add(name, DatasetSpec(fn, tuple(shape), int(classes), sizes)).loader


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def load_plugin(spec: str) -> None:
    """Import a plugin given as a .py file path or a dotted import path; it registers itself.
    Every failure is a ``PluginError`` naming the plugin and the cause."""
    METHODS._ensure()
    if not spec.strip():
        raise PluginError(f"plugin {spec!r}: an empty value; give a .py file or a dotted import path")
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise PluginError(f"plugin file not found: {spec}")
        resolved = str(path.resolve())
        for mod in list(sys.modules.values()):
            if getattr(mod, "__tnbench_plugin_path__", None) == resolved:
                return  # this very file is loaded already
        mod_name = f"tnbench_plugin_{path.stem}"
        n = 1
        while mod_name in sys.modules:  # another plugin file of the same name: keep both
            n += 1
            mod_name = f"tnbench_plugin_{path.stem}_{n}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module.__tnbench_plugin_path__ = resolved
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - SyntaxError included: one line for the user
            del sys.modules[mod_name]
            raise PluginError(f"plugin {spec} failed to load: {_why(e)}") from None
    else:
        if Path(spec).exists():  # a folder, or a file without .py: not importable as given
            raise PluginError(f"plugin {spec!r} is a {'folder' if Path(spec).is_dir() else 'file without .py'}; "
                              "give a .py file or a dotted import path (e.g. mypkg.mymethod)")
        try:
            importlib.import_module(spec)
        except (Exception, SystemExit) as e:  # noqa: BLE001
            raise PluginError(f"plugin {spec!r} failed to import: {_why(e)}") from None


def _why(e: BaseException) -> str:
    """A plugin's failure in one line; ``sys.exit()`` on import (which used to end the CLI with
    exit 0, having run nothing) is a failure like any other."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r}) on import"
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def method_names() -> list[str]:
    return METHODS.names()


def plugin_methods(spec: str) -> list[str]:
    """Names of the methods registered by the plugin ``spec`` (as ``load_plugin`` takes it)."""
    resolved = str(Path(spec).resolve()) if spec.endswith(".py") else None
    names = []
    for name in METHODS.names():
        module = sys.modules.get(getattr(METHODS.get(name), "__module__", ""))
        if resolved is not None:
            mine = getattr(module, "__tnbench_plugin_path__", None) == resolved
        else:
            mine = module is not None and (module.__name__ == spec or module.__name__.startswith(spec + "."))
        if mine:
            names.append(name)
    return names


def get_method(name: str, **options: Any):
    """Build the method registered as ``name`` with its options (a ``Compressor``)."""
    return METHODS.get(name)(**options)


def is_reference(method: str) -> bool:
    """Whether ``method`` names the reference row (a registered class with ``reference = True``,
    i.e. dense). Any other name is False, unregistered ones included: a report may read records
    of a plugin that is not loaded. The class is looked up, never built."""
    return isinstance(method, str) and method in METHODS and bool(getattr(METHODS.get(method), "reference", False))


def tunes_lr(method: str) -> bool:
    """Whether ``method``'s fine-tuning takes a picked lr (``Compressor.uses_finetune_lr``: not
    dense, not NN-BCD). A name not registered counts as one that does, as a new plugin would."""
    return not (isinstance(method, str) and method in METHODS
                and not getattr(METHODS.get(method), "uses_finetune_lr", True))


def network_names() -> list[str]:
    return NETWORKS.names()


def dataset_names() -> list[str]:
    return DATASETS.names()
