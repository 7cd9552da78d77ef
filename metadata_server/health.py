"""``/healthz`` and ``/metrics``.

``GET /healthz`` says whether the server is alive and its store reachable (a real query
against the database, bounded in time): 200 ``{"status": "ok"}``, or 503
``{"status": "unavailable", "store": REASON}`` (``unreachable`` when the store's
database cannot be reached, ``timed out``, or the error's type). It holds no instance data, so it is
served to anyone, on the guests' listener too (where a load balancer checks it).

``GET /metrics`` is Prometheus's text format. Guests reach the main listener, and the
numbers describe the whole site, so there it needs the admin token; ``--metrics-listen``
serves it (and ``/healthz``) without a token on an address of its own, for a
Prometheus on a management network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from beachhead.metadata_server.errors import StoreUnavailable
from beachhead.metadata_server.metrics import Metrics, TimedStore

log = structlog.get_logger("beachhead.metadata")
PROBE_TIMEOUT_S = 5.0


class Health:
    """The two handlers, over a timed store and its metrics."""

    def __init__(self, store: TimedStore, metrics: Metrics, authorize: Callable[[web.Request], None] | None) -> None:
        self.store = store
        self.metrics = metrics
        self._authorize = authorize  # None: no token asked (the metrics listener)

    def routes(self) -> list[web.AbstractRouteDef]:
        """The routes."""
        return [web.get("/healthz", self.healthz), web.get("/metrics", self.exposition)]

    async def healthz(self, request: web.Request) -> web.Response:
        """200 when the store answers a query within ``PROBE_TIMEOUT_S``, else 503."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.store.ping()
        except Exception as exc:
            reason = (
                "timed out"
                if isinstance(exc, TimeoutError)
                else "unreachable"
                if isinstance(exc, StoreUnavailable)
                else type(exc).__name__
            )
            log.warning("metadata.unhealthy", store=reason, error=str(exc)[:200])
            return web.json_response({"status": "unavailable", "store": reason}, status=503)
        return web.json_response({"status": "ok"})

    async def exposition(self, request: web.Request) -> web.Response:
        """The metrics (401 without the admin token on the guests' listener)."""
        if self._authorize is not None:
            self._authorize(request)
        body, content_type = self.metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type  # it carries a version parameter
        return response
