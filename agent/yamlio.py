"""YAML loading that remembers where each value came from.

Error messages for plans and target lists name the line of the offending field, and
integers keep their source text so that ``mode: 0644`` and ``mode: 644`` both mean the
octal mode a user intends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from beachhead.agent.errors import InputError


class SourceInt(int):
    """An int parsed from YAML that remembers how it was written."""

    text: str

    def __new__(cls, value: int, text: str) -> SourceInt:
        self = super().__new__(cls, value)
        self.text = text
        return self


class LineDict(dict[str, Any]):
    """A mapping that knows the source line of each of its keys (1-based)."""

    lines: dict[str, int]
    line: int

    def line_of(self, key: str) -> int | None:
        """Line where ``key`` is written, or None when unknown."""
        return getattr(self, "lines", {}).get(key)


class _Loader(yaml.SafeLoader):
    pass


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> SourceInt:
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    return SourceInt(value, str(node.value))


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.lines = {}
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    """Parse ``path`` as YAML; a missing file or a syntax error is an :class:`InputError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise InputError(path, where, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, None, f"invalid YAML: {exc}") from None


def at_line(where: str, mapping: Any, key: str | None = None) -> str:
    """Append ``(line N)`` to a field description when the source line is known."""
    if isinstance(mapping, LineDict):
        line = mapping.line_of(key) if key is not None else mapping.line
        if line is not None:
            return f"{where} (line {line})"
    return where
