"""Wait conditions that are not vSphere events: a TCP port on the guest accepting."""

from __future__ import annotations

import asyncio
import contextlib

from beachhead.agent.plans import PortOpen

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


async def wait_for_port(host: str, condition: PortOpen) -> None:
    """Return once ``host:port`` accepts a TCP connection. The caller bounds the wait
    with its timeout; between attempts the delay doubles up to two seconds."""
    delay = FIRST_DELAY_S
    while True:
        try:
            _, writer = await asyncio.open_connection(host, condition.port)
        except OSError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
