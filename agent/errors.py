"""The one error hierarchy of Beachhead.

Every error the tool raises on purpose derives from :class:`BeachheadError`. The CLI maps
:class:`InputError` to exit status 2 (bad plan, target or configuration: nothing ran) and
every other :class:`BeachheadError` to exit status 1 (something ran and failed).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path

#: The most characters of a value an error message quotes (see :func:`brief`).
BRIEF_LIMIT = 80
#: How many levels of a nested value :func:`brief` opens before it writes ``...``.
BRIEF_DEPTH = 3


def brief(value: object, limit: int = BRIEF_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, for error messages.

    Only what is shown is visited: at most ``limit`` characters' worth of elements and
    :data:`BRIEF_DEPTH` levels, so a value built by a YAML alias bomb (a billion strings
    behind a few shared lists) or a list that contains itself renders at once.
    """
    out: list[str] = []
    _render(value, out, [limit + 1], 0)
    text = "".join(out)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def brief_names(names: Iterable[object], limit: int = BRIEF_LIMIT) -> str:
    """``a, b, c``: the names (such as a mapping's keys) joined for a message and cut to at
    most ``limit`` characters; only as many names as are shown are read."""
    text = ""
    for name in names:
        text += (", " if text else "") + (name if isinstance(name, str) else brief(name))[: limit + 1]
        if len(text) > limit:
            return text[: max(limit - 3, 0)] + "..."
    return text


def _render(value: object, out: list[str], room: list[int], depth: int) -> None:
    """Append pieces of ``value``'s repr to ``out`` while ``room[0]`` characters remain."""

    def emit(text: str) -> None:
        out.append(text[: max(room[0], 0)])
        room[0] -= len(text)

    if isinstance(value, list | tuple | set | frozenset | dict):
        if isinstance(value, set | frozenset) and not value:
            emit(f"{type(value).__name__}()")
            return
        opening, closing = "[]" if isinstance(value, list) else "()" if isinstance(value, tuple) else "{}"
        emit(opening)
        if depth >= BRIEF_DEPTH and value:
            emit("...")
        else:
            for index, item in enumerate(value.items() if isinstance(value, dict) else value):
                if room[0] <= 0:
                    return
                if index:
                    emit(", ")
                if isinstance(value, dict):
                    _render(item[0], out, room, depth + 1)
                    emit(": ")
                    item = item[1]
                _render(item, out, room, depth + 1)
            if isinstance(value, tuple) and len(value) == 1:
                emit(",")
        emit(closing)
    elif isinstance(value, str | bytes):
        emit(repr(value[: max(room[0], 0) + 1]))
    elif value is None or isinstance(value, bool | int | float | datetime.date):
        try:
            emit(repr(value))
        except ValueError:  # an int too long to print
            emit(f"<an integer of {int(value).bit_length()} bits>")  # type: ignore[arg-type]
    else:
        emit(f"<{type(value).__name__}>")


class BeachheadError(Exception):
    """Root of every error Beachhead raises deliberately."""

    exit_status = 1


class InputError(BeachheadError):
    """Bad input: a plan, target list or option is malformed. Nothing has run.

    ``source`` names the file (or ``--target`` for a command-line URI), ``where`` the
    field inside it (``step 3 (upload).src``), ``reason`` what is wrong with it.
    """

    exit_status = 2

    def __init__(self, source: str | Path | None, where: str | None, reason: str) -> None:
        self.source = str(source) if source is not None else None
        self.where = where
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        location = ": ".join(part for part in (self.source, self.where) if part)
        return f"{location}: {self.reason}" if location else self.reason


class ChannelError(BeachheadError):
    """A channel could not do its job: connection refused, authentication failed, lost link."""

    def __init__(self, channel: str, target: str, reason: str, *, retryable: bool = False) -> None:
        self.channel = channel
        self.target = target
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"{channel} to {target}: {reason}")


class ChannelUnavailable(ChannelError):
    """No connection could be made; another channel may still reach the guest."""


class StepFailed(BeachheadError):
    """A guest step ran and failed; carries what it printed so the user sees why."""

    def __init__(
        self,
        description: str,
        reason: str,
        *,
        exit_status: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.description = description
        self.reason = reason
        self.exit_status_of_command = exit_status
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{description}: {reason}")


class VerificationFailed(StepFailed):
    """A write happened but reading it back did not give what was written."""


class JournalError(BeachheadError):
    """A run directory or journal is missing, unreadable, unwritable or inconsistent."""


class RunBusy(BeachheadError):
    """Another process is working on the same run (an undo holds its lock)."""
