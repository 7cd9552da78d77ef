"""How the command line ends on an error: one line on stderr and the error's exit
status (2 for bad input, 1 for a failure, 130 when interrupted)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import click

from beachhead.agent.errors import BeachheadError, InputError

INTERRUPTED = 130
T = TypeVar("T")


@contextlib.contextmanager
def errors_exit() -> Iterator[None]:
    """Turn a :class:`BeachheadError` raised inside into its message and exit status."""
    try:
        yield
    except BeachheadError as exc:
        label = "error" if isinstance(exc, InputError) else "failed"
        click.echo(f"beachhead: {label}: {exc}", err=True)
        sys.exit(exc.exit_status)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's ``coro``; SIGINT and SIGTERM cancel it cleanly (sessions closed,
    journal entries marked interrupted) and exit with status 130."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        return await coro

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted", err=True)
        sys.exit(INTERRUPTED)
