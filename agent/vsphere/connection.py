"""The async vCenter connection: pyvmomi in a bounded pool of worker threads, one
logged-in session per vCenter and user shared by every target on it, kept alive, and
logged in again when the server forgets it (session expiry, vCenter restart).

A run's :class:`beachhead.agent.context.RunContext` opens its :class:`VCenterPool` on
first use and hands it to the channels and steps that need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import http.client
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import structlog
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from beachhead.agent.errors import BeachheadError, ChannelUnavailable
from beachhead.agent.secrets import Secret
from beachhead.agent.targets import Target

if TYPE_CHECKING:
    from beachhead.agent.vsphere.watcher import VmWatcher
    from beachhead.agent.vsphere.wirelog import WireLog

T = TypeVar("T")
log = structlog.get_logger("beachhead.vsphere")

DEFAULT_WORKERS = 16
LONG_POLL_WORKERS = 4  # the watcher's two long polls, and two a reconnect may leave running
KEEPALIVE_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 30.0
SOCKET_TIMEOUT_S = 60.0
UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
MOREF = re.compile(r"^vm-\d+$")  # a VM's managed object id, as vCenter numbers them
# Faults that mean the server no longer knows our session: log in again, then retry.
SESSION_LOST = (vim.fault.NotAuthenticated,)


class VSphereError(BeachheadError):
    """vCenter refused or failed an operation."""


class VmNotFound(VSphereError):
    """No VM (or more than one) answers to the name or uuid a target gave."""


@dataclass(frozen=True)
class VCenterAddress:
    """Which vCenter, as whom, and how to trust it: targets with the same address share
    one session."""

    host: str
    port: int
    user: str
    http: bool = False
    insecure: bool = False
    ca_file: Path | None = None

    @classmethod
    def of(cls, target: Target) -> VCenterAddress:
        """The vCenter a vsphere:// target names."""
        return cls(target.host, target.port, target.user or "", target.http, target.insecure, target.ca_file)

    @property
    def url(self) -> str:
        """The SDK URL, for messages."""
        return f"{'http' if self.http else 'https'}://{self.host}:{self.port}/sdk"

    def ssl_context(self) -> ssl.SSLContext | None:
        """How to verify the server: the given CA, the system's, or (insecure) not at all."""
        if self.http:
            return None
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


class VCenter:
    """One logged-in vCenter session. Blocking pyvmomi calls run in a bounded pool of
    worker threads through :meth:`call`, which logs in again once when the server has
    forgotten the session."""

    def __init__(
        self,
        address: VCenterAddress,
        password: Secret,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        workers: int = DEFAULT_WORKERS,
        wire_log: WireLog | None = None,
    ) -> None:
        self.address = address
        self._password = password
        self._connect_timeout = connect_timeout
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"vcenter-{address.host}")
        # The watcher's long polls (two collectors) have threads of their own, never
        # queued behind a fleet's calls; two more for polls left running by a reconnect.
        self._long_poll_executor = ThreadPoolExecutor(
            max_workers=LONG_POLL_WORKERS, thread_name_prefix=f"vcenter-{address.host}-wait"
        )
        self._wire_log = wire_log
        self._si: Any = None
        self._content: Any = None
        self._guest_managers: tuple[Any, Any] | None = None
        self._guest_managers_lock = asyncio.Lock()
        self._names = _NameIndex(self)
        self._login_lock = asyncio.Lock()
        self._keepalive: asyncio.Task[None] | None = None
        self._watcher: VmWatcher | None = None
        self._attached = False
        self.log = log.bind(vcenter=address.url, user=address.user)

    @classmethod
    def attached(cls, address: VCenterAddress, service_instance: Any, *, wire_log: WireLog | None = None) -> VCenter:
        """A VCenter on a session its caller already logged in (a pyVmomi
        ServiceInstance): no second login, and the session is left logged in at
        :meth:`close`. When the server forgets it, calls fail (there is no password to
        log in again with)."""
        vcenter = cls(address, Secret(""), wire_log=wire_log)
        vcenter._si = service_instance
        vcenter._attached = True
        return vcenter

    # -- session ------------------------------------------------------------------------
    async def open(self) -> VCenter:
        """Log in; raises :class:`ChannelUnavailable` when the vCenter cannot be reached
        or refuses the credentials."""
        await self._in_thread(self._connect)
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"vcenter-keepalive-{self.address.host}")
        self.log.info("vcenter.connected")
        return self

    def _connect(self) -> None:
        options: dict[str, Any] = {
            "host": self.address.host,
            "port": self.address.port,
            "user": self.address.user,
            "pwd": self._password.reveal(),
            "protocol": "http" if self.address.http else "https",
            # A socket timeout for every call: long enough for the watcher's WaitForUpdatesEx.
            "httpConnectionTimeout": max(self._connect_timeout, SOCKET_TIMEOUT_S),
        }
        context = self.address.ssl_context()
        if context is not None:
            options["sslContext"] = context
        try:
            if self._wire_log is not None:
                from beachhead.agent.vsphere.wire_capture import connect_logged

                self._si = connect_logged(self._wire_log, **options)
            else:
                self._si = SmartConnect(**options)
            # pyVmomi keeps 5 idle connections and closes the rest after each call, so
            # with more threads in flight every extra call paid a TLS handshake.
            self._si._stub.poolSize = self._workers + LONG_POLL_WORKERS
        except vim.fault.InvalidLogin:
            raise self.unavailable("vCenter refused the user name or password", retryable=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise self.unavailable(
                f"certificate not trusted ({exc.verify_message}); give ?ca_file=PATH, or ?insecure=1 to skip checks",
                retryable=False,
            ) from None
        except (OSError, vmodl.MethodFault) as exc:
            raise self.unavailable(f"cannot connect: {exc}", retryable=True) from None

    def unavailable(self, reason: str, *, retryable: bool) -> ChannelUnavailable:
        """An error naming this vCenter."""
        return ChannelUnavailable("vsphere", self.address.url, reason, retryable=retryable)

    async def relogin(self) -> None:
        """Log in again on the same connection, so managed object references stay valid."""
        if self._attached:
            raise self.unavailable(
                "the caller's vCenter session has ended (log in again and pass the new ServiceInstance)",
                retryable=False,
            )
        async with self._login_lock:
            with contextlib.suppress(vmodl.MethodFault):
                if await self._in_thread(lambda: self._si.content.sessionManager.currentSession) is not None:
                    return  # another task logged in meanwhile
            await self._in_thread(
                lambda: self._si.content.sessionManager.Login(self.address.user, self._password.reveal())
            )
            self.log.info("vcenter.relogin")

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            try:
                await self.call(lambda: self._si.CurrentTime())
            except (OSError, vmodl.MethodFault, BeachheadError) as exc:
                self.log.warning("vcenter.keepalive_failed", error=str(exc))

    async def close(self) -> None:
        """Stop the watcher and keep-alive, log out, release the worker threads."""
        if self._watcher is not None:
            await self._watcher.close()
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._si is not None and not self._attached:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._in_thread(Disconnect, self._si), timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._long_poll_executor.shutdown(wait=False, cancel_futures=True)

    # -- calls --------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[..., T], *args: Any, long_poll: bool = False) -> T:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        executor = self._long_poll_executor if long_poll else self._executor
        return await loop.run_in_executor(executor, functools.partial(context.run, fn, *args))

    async def call(self, fn: Callable[..., T], *args: Any, long_poll: bool = False) -> T:
        """Run a blocking pyvmomi call in a worker thread; when the session was lost, log
        in again and retry once. A broken connection raises a retryable
        :class:`ChannelUnavailable`. ``long_poll`` (the watcher's ``WaitForUpdatesEx``)
        runs on a thread of its own, never queued behind other calls."""
        try:
            try:
                return await self._in_thread(fn, *args, long_poll=long_poll)
            except SESSION_LOST:
                await self.relogin()
                return await self._in_thread(fn, *args, long_poll=long_poll)
        except (OSError, http.client.HTTPException) as exc:
            raise self.unavailable(f"vCenter connection lost: {exc!r}", retryable=True) from None

    @property
    def wire_log(self) -> WireLog | None:
        """The run's wire log, which HTTP transfers to this vCenter write to as well."""
        return self._wire_log

    @property
    def content(self) -> Any:
        """The ServiceContent (root folder, managers), read once: pyVmomi's
        ``ServiceInstance.content`` asks the server again on every access."""
        if self._content is None:
            self._content = self._si.RetrieveContent()
        return self._content

    async def guest_managers(self) -> tuple[Any, Any]:
        """The guest operations' process and file managers, read once per session."""
        async with self._guest_managers_lock:
            if self._guest_managers is None:
                manager = self.content.guestOperationsManager
                self._guest_managers = await self.call(lambda: (manager.processManager, manager.fileManager))
            return self._guest_managers

    @property
    def stub(self) -> Any:
        """pyvmomi's SOAP stub (its session cookie authenticates HTTP transfers)."""
        return self._si._stub

    def ssl_context(self) -> ssl.SSLContext | None:
        """How HTTP transfers to this vCenter check its certificate: as the session's own
        connection does (an attached session's context is its caller's)."""
        if self._attached:
            context = getattr(self.stub, "schemeArgs", {}).get("context")
            return context if isinstance(context, ssl.SSLContext) else self.address.ssl_context()
        return self.address.ssl_context()

    def http_session(
        self, timeout: aiohttp.ClientTimeout, *, send_session: bool = True, limit: int = 100
    ) -> aiohttp.ClientSession:
        """An HTTP client for the vCenter's and its hosts' own URLs (datastore files,
        guest file transfers): certificates checked as the SOAP connection checks them,
        the session cookie sent when ``send_session`` (transfer URLs carry a ticket of
        their own instead), every exchange written to the run's wire log."""
        wire_log = self._wire_log
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context() or False, limit=limit),
            cookies={"vmware_soap_session": self.session_cookie()} if send_session else None,
            timeout=timeout,
            trace_configs=[wire_log.trace_config()] if wire_log is not None else [],
        )

    def session_cookie(self) -> str:
        """The ``vmware_soap_session`` cookie value, for datastore and transfer HTTP calls."""
        cookie = str(self.stub.cookie or "")
        match = re.search(r'vmware_soap_session="?([^";]+)', cookie)
        return match.group(1) if match else ""

    def http_base(self) -> str:
        """``scheme://host:port`` of the vCenter, for URLs built by hand."""
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"{'http' if self.address.http else 'https'}://{host}:{self.address.port}"

    # -- inventory ----------------------------------------------------------------------
    async def find_vm(self, name_or_uuid: str, *, fresh: bool = False) -> Any:
        """The VM with this managed object id (``vm-42``), instance uuid (or BIOS uuid),
        else this exact name. Names are looked up in an index shared by the session's
        targets (see :class:`_NameIndex`); ``fresh`` reads the names again (after a
        vCenter restart renumbered its VMs)."""
        if MOREF.match(name_or_uuid):
            vm = vim.VirtualMachine(name_or_uuid, self.stub)
            try:
                await self.call(lambda: vm.name)
                return vm
            except vmodl.fault.ManagedObjectNotFound:
                pass  # not an id in this inventory: perhaps a VM named so
        if UUID.match(name_or_uuid):
            index = self.content.searchIndex
            for instance_uuid in (True, False):
                found = await self.call(index.FindByUuid, None, name_or_uuid, True, instance_uuid)
                if found is not None:
                    return found
        matches = await self._names.lookup(name_or_uuid, fresh=fresh)
        if not matches:
            raise VmNotFound(f"{self.address.url}: no VM named {name_or_uuid!r}")
        if len(matches) > 1:
            raise VmNotFound(f"{self.address.url}: {len(matches)} VMs are named {name_or_uuid!r}; use its uuid")
        return matches[0]

    def vms_by_name(self) -> dict[str, list[Any]]:
        """Every VM of the inventory by name, in one RetrieveContents (blocking: call it
        through :meth:`call`)."""
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [vim.VirtualMachine], True)
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[
                            vmodl.query.PropertyCollector.TraversalSpec(
                                name="view", type=vim.view.ContainerView, path="view", skip=False
                            )
                        ],
                    )
                ],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
            )
            by_name: dict[str, list[Any]] = {}
            for item in self.content.propertyCollector.RetrieveContents([spec]):
                if item.propSet:
                    by_name.setdefault(str(item.propSet[0].val), []).append(item.obj)
            return by_name
        finally:
            view.DestroyView()

    @property
    def watcher(self) -> VmWatcher:
        """The one event watcher of this vCenter, started on first use."""
        if self._watcher is None:
            from beachhead.agent.vsphere.watcher import VmWatcher

            self._watcher = VmWatcher(self)
        return self._watcher


class _NameIndex:
    """VM names of one vCenter session, read in one retrieval that concurrent lookups
    share: a thousand targets named by VM name cost one inventory read, not a thousand
    (each of them the size of the inventory).

    A name the index lacks is read again from a retrieval that started after the
    lookup did (a VM created meanwhile, a clone made just before it is customized). A
    name it has is trusted for the session: a VM renamed, or destroyed and made again
    under the same name, while one run is under way is found by ``fresh`` lookups
    only, and calls on the stale reference fail with ManagedObjectNotFound."""

    def __init__(self, vcenter: VCenter) -> None:
        self._vcenter = vcenter
        self._by_name: dict[str, list[Any]] = {}
        self._read_at = 0.0  # when the retrieval behind _by_name started
        self._reading: tuple[float, asyncio.Future[dict[str, list[Any]]]] | None = None

    async def lookup(self, name: str, *, fresh: bool = False) -> list[Any]:
        """The VMs named ``name`` (none, one, or several)."""
        asked = time.monotonic()
        if not fresh and name in self._by_name:
            return self._by_name[name]
        if not fresh and self._reading is not None:  # one under way: join it, read again on a miss
            by_name = await asyncio.shield(self._reading[1])
            if name in by_name:
                return by_name[name]
        return (await self._read(started_after=asked)).get(name, [])

    async def _read(self, started_after: float) -> dict[str, list[Any]]:
        """The names from a retrieval that started no earlier than ``started_after``:
        the one under way when it did, else a new one."""
        if self._reading is None or self._reading[0] < started_after:
            started = time.monotonic()
            reading = asyncio.ensure_future(self._vcenter.call(self._vcenter.vms_by_name))
            self._reading = (started, reading)
            reading.add_done_callback(lambda done: self._done(started, done))
        return await asyncio.shield(self._reading[1])

    def _done(self, started: float, reading: asyncio.Future[dict[str, list[Any]]]) -> None:
        if self._reading is not None and self._reading[1] is reading:
            self._reading = None
        if not reading.cancelled() and reading.exception() is None and started >= self._read_at:
            self._by_name, self._read_at = reading.result(), started


class VCenterPool:
    """The vCenter sessions of one run: one per vCenter address, opened on first use."""

    def __init__(self, wire_log: WireLog | None = None) -> None:
        self.wire_log = wire_log
        # Keyed by address, and by the caller's session for a target that brought one.
        self._vcenters: dict[tuple[VCenterAddress, int | None], VCenter] = {}
        self._opening: dict[tuple[VCenterAddress, int | None], asyncio.Lock] = {}

    async def get(self, target: Target, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> VCenter:
        """The logged-in vCenter of a vsphere:// target: the target's own session when
        it brought one (:attr:`Target.session`), else one login per address."""
        address = VCenterAddress.of(target)
        key: tuple[VCenterAddress, int | None]
        if target.session is not None:
            key = (address, id(target.session))
            if key not in self._vcenters:
                self._vcenters[key] = VCenter.attached(address, target.session, wire_log=self.wire_log)
            return self._vcenters[key]
        if target.password is None:
            raise ChannelUnavailable("vsphere", target.name, "no vCenter password (?password_env=VAR)")
        key = (address, None)
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._vcenters:
                vcenter = VCenter(address, target.password, connect_timeout=connect_timeout, wire_log=self.wire_log)
                self._vcenters[key] = await vcenter.open()
            return self._vcenters[key]

    async def vm_of(self, target: Target, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> tuple[VCenter, Any]:
        """The logged-in vCenter of a vsphere:// target and the target's VM on it."""
        vcenter = await self.get(target, connect_timeout)
        return vcenter, await vcenter.find_vm(target.vm or "")

    async def close(self) -> None:
        """Close every session."""
        vcenters, self._vcenters = list(self._vcenters.values()), {}
        for vcenter in vcenters:
            await vcenter.close()


@contextlib.asynccontextmanager
async def vcenter_pool(wire_log: WireLog | None = None) -> AsyncIterator[VCenterPool]:
    """A pool for the work inside (a command, an undo), its sessions closed after."""
    pool = VCenterPool(wire_log)
    try:
        yield pool
    finally:
        await pool.close()
