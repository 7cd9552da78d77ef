"""The metadata server as an aiohttp application, and running it.

Bad input never gets a 5xx: refusals are 4xx with a one-line reason (JSON under
``/admin/``, text elsewhere), nothing of another instance and no stack trace. A bug is
logged and answered with a bare 500.
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
from beachhead.metadata_server.admin_api import ADMIN_BODY_LIMIT, AdminApi
from beachhead.metadata_server.errors import RequestRefused, ServerError
from beachhead.metadata_server.events import StatusEvents
from beachhead.metadata_server.guest_api import GuestApi
from beachhead.metadata_server.identify import Identifier, LeaseFile, MacLookup
from beachhead.metadata_server.store import SqliteStore, Store
from beachhead.metadata_server.tokens import TokenIssuer
from beachhead.metadata_server.vsphere_lookup import VSphereLookup

log = structlog.get_logger("beachhead.metadata")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServerConfig:
    """How a metadata server runs."""

    host: str
    port: int
    db: Path
    admin_token: bytes
    require_token: bool = False
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    leases: Path | None = None
    vcenter: Target | None = field(default=None, repr=False)  # recognise guests through vSphere


def read_admin_token(path: Path) -> bytes:
    """The admin token from its file (surrounding whitespace ignored)."""
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ServerError(f"{path}: cannot read the admin token ({exc.strerror})") from None
    if len(token) < 16:
        raise ServerError(f"{path}: the admin token must be at least 16 characters")
    return token


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals into their 4xx; keep anything unexpected from leaking."""
    admin = request.path.startswith("/admin")
    try:
        return await handler(request)
    except RequestRefused as refused:
        if admin:
            return web.json_response({"error": refused.reason, "field": refused.field}, status=refused.status)
        return web.Response(text=f"{refused.reason}\n", status=refused.status, content_type="text/plain")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("metadata.internal_error", path=request.path)
        return web.Response(text="internal error\n", status=500, content_type="text/plain")


def create_app(store: Store, config: ServerConfig, lookup: MacLookup | None = None) -> web.Application:
    """The application: guest routes and the admin API over ``store``."""
    events = StatusEvents()
    identifier = Identifier(
        store,
        trusted_proxies=config.trusted_proxies,
        leases=LeaseFile(config.leases) if config.leases else None,
        lookup=lookup,
    )
    app = web.Application(middlewares=[refusals], client_max_size=ADMIN_BODY_LIMIT)
    app.add_routes(AdminApi(store, events, config.admin_token).routes())
    app.add_routes(GuestApi(store, identifier, TokenIssuer(), events, require_token=config.require_token).routes())
    return app


async def serve(config: ServerConfig) -> None:
    """Open the store, serve until SIGTERM or SIGINT (or cancellation), close."""
    store = SqliteStore(config.db)
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


async def _serve(store: SqliteStore, config: ServerConfig, lookup: MacLookup | None) -> None:
    runner = web.AppRunner(create_app(store, config, lookup), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ServerError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        address = f"http://{config.host}:{config.port}/"
        if ":" in config.host:
            address = f"http://[{config.host}]:{config.port}/"
        log.info("metadata.serving", url=address, db=str(config.db), instances=len(store.all()))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("metadata.stopping")
    finally:
        await runner.cleanup()
