"""How the command line ends on an error: one line on stderr and the error's exit
status (2 for bad input, 1 for a failure)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from beachhead.agent.errors import BeachheadError, InputError


@contextlib.contextmanager
def errors_exit() -> Iterator[None]:
    """Turn a :class:`BeachheadError` raised inside into its message and exit status."""
    try:
        yield
    except BeachheadError as exc:
        label = "error" if isinstance(exc, InputError) else "failed"
        click.echo(f"beachhead: {label}: {exc}", err=True)
        sys.exit(exc.exit_status)
