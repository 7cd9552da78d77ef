"""The metadata server as an aiohttp application, and running it.

Bad input never gets a 5xx: refusals are 4xx with a one-line reason (JSON under
``/admin/``, text elsewhere), nothing of another instance and no stack trace. A request
that needs the store while its database cannot be reached gets 503 with ``Retry-After``
(the same way). A bug is logged and answered with a bare 500. Abuse is bounded by :mod:`limits`: connections
are capped overall and per source, requests must arrive in time, and repeated errors
are logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web

from beachhead.agent.targets import Target
from beachhead.agent.vsphere.connection import vcenter_pool
from beachhead.metadata_server.access_log import access_middleware
from beachhead.metadata_server.admin_api import ADMIN_BODY_LIMIT, AdminApi
from beachhead.metadata_server.errors import RequestRefused, ServerError, StoreUnavailable
from beachhead.metadata_server.events import StatusEvents
from beachhead.metadata_server.guest_api import GuestApi
from beachhead.metadata_server.health import Health
from beachhead.metadata_server.identify import Identifier, LeaseFile, MacLookup, in_networks
from beachhead.metadata_server.limits import (
    ConnectionLimiter,
    LibraryLogHandler,
    Limits,
    Listener,
    ThrottledLog,
    fit_fd_limit,
    listen,
)
from beachhead.metadata_server.metrics import Metrics, TimedStore
from beachhead.metadata_server.store import Store, open_store
from beachhead.metadata_server.tokens import TokenIssuer
from beachhead.metadata_server.vsphere_lookup import VSphereLookup

log = structlog.get_logger("beachhead.metadata")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEALTH = web.AppKey("health", Health)


@dataclass
class ServerConfig:
    """How a metadata server runs."""

    host: str
    port: int
    db: Path | str  # a SQLite file, or a postgresql:// URL (no password in it)
    admin_token: bytes
    require_token: bool = False
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    leases: Path | None = None
    vcenter: Target | None = field(default=None, repr=False)  # recognise guests through vSphere
    limits: Limits = field(default_factory=Limits)
    access_log: bool = True  # one metadata.request line per request
    metrics_listen: tuple[str, int] | None = None  # /metrics and /healthz without a token, here


def read_admin_token(path: Path) -> bytes:
    """The admin token from its file (surrounding whitespace ignored)."""
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ServerError(f"{path}: cannot read the admin token ({exc.strerror})") from None
    if len(token) < 16:
        raise ServerError(f"{path}: the admin token must be at least 16 characters")
    return token


def _answer(admin: bool, status: int, reason: str, field: str) -> web.Response:
    """A refusal's answer: JSON under ``/admin/``, one line of text elsewhere."""
    if admin:
        return web.json_response({"error": reason, "field": field}, status=status)
    return web.Response(text=f"{reason}\n", status=status, content_type="text/plain")


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals into their 4xx and a store outage into 503; keep anything
    unexpected from leaking."""
    admin = request.path.startswith("/admin")
    try:
        return await handler(request)
    except StoreUnavailable as outage:
        log.warning("metadata.store_unavailable", path=request.path, error=str(outage)[:200])
        response = _answer(admin, 503, "the store is unavailable, try again later", "store")
        response.headers["Retry-After"] = str(outage.retry_after_s)
        return response
    except RequestRefused as refused:
        response = _answer(admin, refused.status, refused.reason, refused.field)
        if refused.close:  # answer, then close without reading (lingering on) the rest of the request
            response.force_close()
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write_eof()
            if request.transport is not None:
                request.transport.close()
        return response
    except web.HTTPException:
        raise
    except Exception:
        log.exception("metadata.internal_error", path=request.path)
        return web.Response(text="internal error\n", status=500, content_type="text/plain")


def create_app(store: Store, config: ServerConfig, lookup: MacLookup | None = None) -> web.Application:
    """The application: guest routes, the admin API, ``/healthz`` and ``/metrics`` over
    ``store``, its writes timed."""
    metrics = Metrics(lambda: len(store.all()))
    timed = TimedStore(store, metrics)
    store = timed
    events = StatusEvents()
    store.subscribe(events.changed)  # another server's write wakes waiters here
    identifier = Identifier(
        store,
        trusted_proxies=config.trusted_proxies,
        leases=LeaseFile(config.leases) if config.leases else None,
        lookup=lookup,
    )
    app = web.Application(
        middlewares=[access_middleware(metrics, config.access_log), refusals], client_max_size=ADMIN_BODY_LIMIT
    )
    body_timeout_s = config.limits.body_timeout_s
    admin_api = AdminApi(store, events, config.admin_token, body_timeout_s=body_timeout_s)
    health = Health(timed, metrics, admin_api.authorize)
    app[HEALTH] = health
    app.add_routes(health.routes())  # before the guest routes: /{version} would take these paths
    app.add_routes(admin_api.routes())
    guest_api = GuestApi(
        store,
        identifier,
        TokenIssuer(store.token_key),
        events,
        require_token=config.require_token,
        body_timeout_s=body_timeout_s,
    )
    app.add_routes(guest_api.routes())
    return app


async def serve(config: ServerConfig) -> None:
    """Open the store, serve until SIGTERM or SIGINT (or cancellation), close."""
    store = open_store(config.db)
    try:
        await store.open()
    except Exception as exc:
        raise ServerError(f"{config.db}: cannot open the store ({exc})") from None
    try:
        async with contextlib.AsyncExitStack() as stack:
            lookup = None
            if config.vcenter is not None:
                pool = await stack.enter_async_context(vcenter_pool())
                lookup = VSphereLookup(pool, config.vcenter)
            await _serve(store, config, lookup)
    finally:
        await store.close()


async def _serve(store: Store, config: ServerConfig, lookup: MacLookup | None) -> None:
    limits = config.limits
    loop = asyncio.get_running_loop()
    throttle = ThrottledLog(loop, limits.log_interval_s)
    uninstall = LibraryLogHandler(throttle).install()
    max_connections = fit_fd_limit(limits.max_connections)
    if max_connections < limits.max_connections:
        log.warning("metadata.fd_limit", max_connections=max_connections, wanted=limits.max_connections)
    limiter = ConnectionLimiter(
        max_connections,
        limits.max_connections_per_source,
        throttle,
        exempt=lambda source: in_networks(source, config.trusted_proxies),
    )
    # aiohttp's keep-alive timeout runs from a connection's start, and from each
    # response, until a whole request head has arrived: it is the header timeout.
    runner = web.AppRunner(
        create_app(store, config, lookup),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.header_timeout_s,
    )
    listener: Listener | None = None
    metrics_runner: web.AppRunner | None = None
    try:
        await runner.setup()
        if config.metrics_listen is not None:
            metrics_runner = await _serve_metrics(runner.app[HEALTH], *config.metrics_listen)
        assert runner.server is not None
        try:
            sock = listen(config.host, config.port)
        except OSError as exc:
            raise ServerError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        listener = Listener(sock, runner.server, limiter, throttle)
        listener.start()
        address = f"http://{config.host}:{config.port}/"
        if ":" in config.host:
            address = f"http://[{config.host}]:{config.port}/"
        log.info(
            "metadata.serving",
            url=address,
            db=str(config.db),
            instances=len(store.all()),
            header_timeout_s=limits.header_timeout_s,
            body_timeout_s=limits.body_timeout_s,
            max_connections=max_connections,
            max_connections_per_source=limits.max_connections_per_source,
            access_log=config.access_log,
            metrics_listen=_url(*config.metrics_listen) if config.metrics_listen else None,
        )
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("metadata.stopping")
    finally:
        if listener is not None:
            listener.close()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        uninstall()
        throttle.flush()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _serve_metrics(health: Health, host: str, port: int) -> web.AppRunner:
    """``/metrics`` and ``/healthz``, without a token, on ``--metrics-listen`` (counted
    in the metrics, not in the access log)."""
    app = web.Application(middlewares=[access_middleware(health.metrics, False), refusals])
    app.add_routes(Health(health.store, health.metrics, None).routes())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ServerError(f"cannot listen on {host}:{port} (--metrics-listen): {exc.strerror}") from None
    return runner
