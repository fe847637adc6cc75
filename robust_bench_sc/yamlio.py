"""YAML reading that remembers where every key stands, for errors that name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file is malformed; the message names file, line and key."""


#: the most values (scalars, list entries, mapping entries) a YAML document may expand to, its
#: aliases followed: a suite has a few thousand at most; "billion laughs" (nested aliases that
#: each repeat the one before) grows past any memory, and is refused before it is built
MAX_EXPANDED_NODES = 100_000


class _LineLoader(yaml.SafeLoader):
    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than :data:`MAX_EXPANDED_NODES` values.
    Each node's expanded size is counted once (memoised on the shared node an alias points
    to), so the check is linear in the document as written."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        kids = [k for pair in node.value for k in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if not expanded:
            if key in visiting:  # reached again while expanding itself: `&a [*a]`
                raise ConfigError(f"line {node.start_mark.line + 1}: a YAML alias refers to the value that "
                                  "contains it (a recursive value); write the values out")
            visiting.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        visiting.discard(key)
        total = 1 + sum(sizes[id(k)] for k in kids)
        sizes[key] = total
        if total > MAX_EXPANDED_NODES:
            raise ConfigError(f"YAML aliases at line {node.start_mark.line + 1} expand to more than "
                              f"{MAX_EXPANDED_NODES} values (nested '*' aliases repeating each other); write "
                              "the values out, or use fewer aliases")


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> LinedDict:
    mapping: dict = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        mapping[key] = loader.construct_object(value_node, deep=deep)
        lines[key] = key_node.start_mark.line + 1
    return LinedDict(mapping, lines, node.start_mark.line + 1)


class LinedDict(dict):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    def __init__(self, data: dict, lines: dict[Any, int], line: int):
        super().__init__(data)
        self.key_lines = lines
        self.line = line


class LinedList(list):
    """A YAML sequence that remembers its line (1-based)."""

    def __init__(self, data: list, line: int):
        super().__init__(data)
        self.line = line


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode, deep: bool = False) -> LinedList:
    return LinedList(loader.construct_sequence(node, deep=True), node.start_mark.line + 1)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors become :class:`ConfigError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); "
                          "save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {exc.problem}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:  # a control character (ReaderError), and any other unmarked YAML error
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def line_of(data: Any, loc: tuple) -> int | None:
    """Best line number for a pydantic error location inside data loaded by :func:`load_yaml`."""
    node, best = data, getattr(data, "line", None)
    for part in loc:
        if isinstance(node, dict) and part in node:
            best = getattr(node, "key_lines", {}).get(part, best)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            best = getattr(node, "line", best)
        else:
            break
    return best


def plain(data: Any) -> Any:
    """Strip line bookkeeping: plain dicts and lists."""
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    return data
