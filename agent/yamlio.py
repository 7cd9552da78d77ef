"""YAML loading that remembers where each value came from.

Error messages for plans and target lists name the line of the offending field, and
integers keep their source text so that ``mode: 0644`` and ``mode: 644`` both mean the
octal mode a user intends.

A file costs at most what its size allows: it is refused past :data:`MAX_FILE_BYTES`,
nested deeper than :data:`MAX_DEPTH`, with aliases that would expand to more than
:data:`MAX_ALIAS_NODES` nodes (a "billion laughs"), or with a key written twice in one
mapping (which would silently keep the last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark

from beachhead.agent.errors import InputError, brief

#: The largest plan or targets file read (1 MiB); a larger one is refused unread.
MAX_FILE_BYTES = 1024 * 1024
#: How deep collections may nest (plans need about five levels; far below the depth at
#: which Python's recursion limit would end the parse with a traceback).
MAX_DEPTH = 100
#: How many nodes aliases may add to a file when expanded: ``*name`` adds the size of what
#: ``&name`` marks, aliases inside it included. Ample to reuse blocks, far below a bomb.
MAX_ALIAS_NODES = 10_000
#: The longest integer literal read (digits and signs); Python refuses to print longer ones.
MAX_INT_CHARACTERS = 100


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


class Refused(yaml.MarkedYAMLError):
    """Well-formed YAML that is not loaded: nested too deep, too many aliases, a key
    written twice, an integer too long to print."""


class _Loader(yaml.SafeLoader):
    """A safe loader that counts, while composing, how deep it is and how many nodes the
    aliases seen so far expand to (so a bomb is refused before it is built)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.expanded = 0  # nodes so far, each alias counted as the nodes it stands for
        self.alias_nodes = 0  # the part of ``expanded`` that aliases added
        self.anchor_sizes: dict[str, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, refusing it past :data:`MAX_DEPTH` or :data:`MAX_ALIAS_NODES`."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if event.anchor is not None and event.anchor in self.anchors:
                size = self.anchor_sizes.get(event.anchor)
                if size is None:
                    raise Refused(None, None, f"the alias *{event.anchor} is inside what it names", mark)
                self.expanded += size
                self.alias_nodes += size
                if self.alias_nodes > MAX_ALIAS_NODES:
                    raise Refused(
                        None,
                        None,
                        f"too many YAML aliases: they expand to more than {MAX_ALIAS_NODES} nodes",
                        mark,
                    )
            return super().compose_node(parent, index)
        if self.depth >= MAX_DEPTH:
            raise Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        before = self.expanded
        self.expanded += 1
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if event.anchor is not None:
            self.anchor_sizes[event.anchor] = self.expanded - before
        return node


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> SourceInt:
    if len(node.value) > MAX_INT_CHARACTERS:
        raise Refused(None, None, f"an integer longer than {MAX_INT_CHARACTERS} characters", node.start_mark)
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    return SourceInt(value, str(node.value))


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
    # Keys written in this mapping must differ; a key merged in (``<<: *defaults``) may be
    # overridden by one written here, as YAML's merge means.
    written = {id(key_node) for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    result = LineDict()
    result.lines = {}
    result.line = node.start_mark.line + 1
    first_written: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        line = key_node.start_mark.line + 1
        if id(key_node) in written:
            if key in first_written:
                raise Refused(
                    None,
                    None,
                    f"duplicate key {brief(key)}: on line {first_written[key]} and again on line {line}",
                    key_node.start_mark,
                )
            first_written[key] = line
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    """Parse ``path`` as YAML; a missing, unreadable or too large file, a syntax error
    and what :class:`Refused` covers are an :class:`InputError`."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)  # no more than that is ever read
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        limit = f"{MAX_FILE_BYTES / 2**20:g} MiB"
        raise InputError(path, None, f"larger than {limit}, the limit for a plan or targets file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except Refused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise InputError(path, where, str(exc.problem)) from None
    except RecursionError:  # MAX_DEPTH should prevent it; never a traceback if not
        raise InputError(path, None, "nested too deeply") from None
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
