"""Reading suite YAML safely: YAML 1.2 floats (``1e-3`` is a number), no aliases bombs, and
limits on size, node count and depth, each refusal a one-line ``SuiteError``."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from bench.suite_schema import SuiteError


#: YAML 1.1 wants a dot and a signed exponent in a float (``1.0e-3``); people write ``1e-3``,
#: which PyYAML then reads as a string. This is the YAML 1.2 core float (plus ``_`` separators).
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)


class SuiteLoader(yaml.SafeLoader):
    """SafeLoader whose floats include exponent forms without a dot (1e6, 1e-3, 5.0e-4)."""


SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SuiteLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


#: bounds on a suite's YAML: text size, nodes after expanding aliases, nesting depth (an alias
#: bomb is a few hundred bytes that expand to billions of nodes and used to hang the CLI)
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32


def parse_yaml(text: str, where: str) -> Any:
    """``text`` parsed with ``SuiteLoader``; malformed or oversized YAML is a one-line SuiteError."""
    if len(text) > MAX_YAML_BYTES:
        raise SuiteError(f"{where}: {len(text):,} characters of YAML, more than a suite needs "
                         f"(at most {MAX_YAML_BYTES:,})")
    try:
        _check_size(yaml.compose(text, Loader=SuiteLoader), where)
        return yaml.load(text, Loader=SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SuiteError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None


def _check_size(root: yaml.Node | None, where: str) -> None:
    """Count the nodes the document has once aliases are expanded, stopping at the bounds."""
    count, stack = 0, [(root, 1)] if root is not None else []
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
            what = (f"more than {MAX_YAML_NODES:,} values once its aliases are expanded" if count > MAX_YAML_NODES
                    else f"nested more than {MAX_YAML_DEPTH} levels deep")
            raise SuiteError(f"{where}: the YAML has {what}; a suite needs far less")
        if isinstance(node, yaml.SequenceNode):
            stack += [(child, depth + 1) for child in node.value]
        elif isinstance(node, yaml.MappingNode):
            stack += [(part, depth + 1) for pair in node.value for part in pair]


def read_text(path: Path) -> str:
    """A suite file's text; a file that is not UTF-8 is a SuiteError naming it."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise SuiteError(f"{path}: cannot be read ({os.strerror(e.errno) if e.errno else e})") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem

