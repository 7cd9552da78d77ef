"""One line per request, for a person reading the log, and the request metrics.

The line (``metadata.request``) names the method, the path without its query string,
the status, the time taken, the connection's address, and, when the guest was
recognised, its address and instance. Nothing a request carries besides its path is
logged: no headers (the admin token, IMDSv2 tokens), no query strings, no bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from beachhead.metadata_server.metrics import Metrics, route_family

log = structlog.get_logger("beachhead.metadata")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_LOGGED_PATH = 256
# What the guest handlers leave on a request for this line and the metrics.
GUEST_ADDRESS = "beachhead.guest_address"
INSTANCE_ID = "beachhead.instance_id"
UNRECOGNISED = "beachhead.unrecognised"


def recognised(request: web.Request, address: str, instance_id: str | None) -> None:
    """Note on ``request`` who asked (``instance_id`` None: nobody published is at
    ``address``), for the access log and the metrics."""
    request[GUEST_ADDRESS] = address
    if instance_id is None:
        request[UNRECOGNISED] = True
    else:
        request[INSTANCE_ID] = instance_id


def is_wait(request: web.Request) -> bool:
    """Whether the request is an admin long-poll."""
    return request.method == "GET" and request.path.startswith("/admin/") and request.path.endswith("/wait")


def access_middleware(metrics: Metrics, enabled: bool) -> Middleware:
    """The middleware that counts every request and (when ``enabled``) logs it."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        family = route_family(request.path)
        waiting = is_wait(request)
        if waiting:
            metrics.waiters.inc()
        status = 0
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # aiohttp's own answers: no route, body too large
            status = exc.status
            raise
        except asyncio.CancelledError:  # the client went away, or the server is stopping
            status = 499
            raise
        finally:
            if waiting:
                metrics.waiters.dec()
            seconds = time.perf_counter() - start
            if status:
                metrics.observe(family, status, seconds)
            if request.get(UNRECOGNISED):
                metrics.unrecognised.inc()
            if enabled and status:
                _log(request, status, seconds)

    return access


def _log(request: web.Request, status: int, seconds: float) -> None:
    fields: dict[str, object] = {
        "method": request.method,
        "path": request.path[:MAX_LOGGED_PATH],
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "remote": request.remote,
    }
    if (address := request.get(GUEST_ADDRESS)) is not None and address != request.remote:
        fields["guest"] = address  # forwarded by a trusted proxy
    if (instance_id := request.get(INSTANCE_ID)) is not None:
        fields["instance"] = instance_id
    log.info("metadata.request", **fields)
