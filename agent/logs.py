"""structlog set-up. The CLI writes JSON lines on stderr when not on a terminal,
readable lines when on one (:func:`configure_logging`); imported as a library,
Beachhead's events go to the standard :mod:`logging` module instead
(:func:`route_to_stdlib_logging`), so the caller's logging configuration decides what
is shown. Every event passes through the secret redactor first."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from beachhead.agent.secrets import REDACTOR


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time, so rich's live display, which
    swaps stderr, can place log lines above its progress bars."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    redacted: MutableMapping[str, Any] = REDACTOR.redact(dict(event))
    return redacted


def configure_logging(level: str = "info", json_output: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog for the CLI (or a library caller that wants our format)."""
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def route_to_stdlib_logging() -> None:
    """For library callers: unless structlog is configured already (by the CLI, or by a
    caller that uses structlog itself), send Beachhead's events to the standard logging
    module, under the loggers ``beachhead.*``, as one ``event key=value ...`` message each
    (secrets masked), at their own levels. With no logging configuration in the caller,
    the ``NullHandler`` on ``beachhead`` keeps them all quiet."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
