"""Secret values that must never reach a log, a journal or a wire log.

A :class:`Secret` hides its value from ``repr``/``str``; every secret created registers
its value with the process-wide :data:`REDACTOR`, which the log pipeline and the journal
writer apply to everything they write, so a password echoed back by a command is still
masked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"


class Redactor:
    """Replaces every registered secret value by ``***`` in strings and nested data."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._substrings: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        """Remember ``value`` so it is masked from now on (values under 4 characters are
        masked too, but only as whole strings, to avoid mangling ordinary text)."""
        if value:
            with self._lock:
                if value not in self._values:
                    self._values.add(value)
                    self._substrings = _long_ones_first(self._values)

    def registered(self) -> frozenset[str]:
        """Every value masked now."""
        with self._lock:
            return frozenset(self._values)

    def forget(self, values: Iterable[str]) -> None:
        """Stop masking ``values`` (for a process that outlives what registered them,
        such as a test session)."""
        with self._lock:
            self._values.difference_update(values)
            self._substrings = _long_ones_first(self._values)

    def substrings(self) -> tuple[str, ...]:
        """The values masked wherever they occur inside a text (4 characters or more),
        longest first: what a stream masks block by block (see :mod:`beachhead.agent.output`).
        The same tuple is returned until another value is registered."""
        return self._substrings

    def redact(self, data: Any) -> Any:
        """Return ``data`` with every registered secret masked; containers are copied."""
        if isinstance(data, str):
            return self._redact_text(data)
        if isinstance(data, Mapping):
            return {key: self.redact(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return type(data)(self.redact(value) for value in data)
        if isinstance(data, Secret):
            return MASK
        return data

    def _redact_text(self, text: str) -> str:
        if text in self._values:
            return MASK
        for value in self._substrings:
            if value in text:
                text = text.replace(value, MASK)
        return text


def _long_ones_first(values: set[str]) -> tuple[str, ...]:
    return tuple(sorted((value for value in values if len(value) >= 4), key=len, reverse=True))


REDACTOR = Redactor()


class Secret:
    """A password, token or passphrase: usable through :meth:`reveal`, invisible elsewhere."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        REDACTOR.register(value)

    def reveal(self) -> str:
        """Return the clear value, for handing to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
