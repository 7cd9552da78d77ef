"""What guests did, as events: the admin API's long-poll waits on them instead of
polling the store. A write through this server wakes waiters directly; one through
another server sharing the store wakes them through ``Store.subscribe``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum

from beachhead.metadata_server.records import Instance


class GuestEvent(StrEnum):
    """Status changes a workflow can wait for."""

    FETCHED = "fetched"  # the guest fetched its user-data
    PHONED_HOME = "phoned_home"  # the guest reported done (cloud-init phone_home)
    PASSWORD_POSTED = "password_posted"  # noqa: S105 - an event name: the guest posted its password


def happened(instance: Instance, event: GuestEvent) -> float | None:
    """When ``event`` happened to ``instance`` (None: not yet)."""
    if event is GuestEvent.FETCHED:
        return instance.status.fetched_at
    if event is GuestEvent.PHONED_HOME:
        return instance.status.phoned_home_at
    return instance.password.posted_at if instance.password else None


class StatusEvents:
    """Wakes waiters whenever an instance's status changes."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()

    async def changed(self) -> None:
        """Tell every waiter to look again."""
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, current: Callable[[], Instance | None], event: GuestEvent, timeout_s: float) -> float | None:
        """Wait until ``event`` has happened for the instance ``current`` returns (at
        once when it already has); None when ``timeout_s`` passes first or the instance
        is revoked."""

        def seen() -> bool:
            instance = current()
            return instance is None or happened(instance, event) is not None

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(seen)
        except TimeoutError:
            return None
        instance = current()
        return None if instance is None else happened(instance, event)
