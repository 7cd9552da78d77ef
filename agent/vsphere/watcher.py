"""One event watcher per vCenter: a PropertyCollector ``WaitForUpdatesEx`` loop over a
list view of the watched VMs, plus an EventHistoryCollector for what properties do not
show (guest customization, reconfiguration) and a list view of the tasks callers wait
on, followed by a second collector's loop.

A thousand watched VMs cost one loop, one list view and one filter update per change,
not a thousand pollers; VMs (and the tasks callers wait on) join the list views in
batches, so a thousand that start at once cost a few ``ModifyListView`` calls. The
watcher keeps each VM's current state, so a wait resolves at once when the state
already holds, and turns every change into a typed :class:`VmEvent`. When the vCenter
goes away (restart, network), it logs in again, rebuilds its filters and carries on;
what changed meanwhile arrives as ordinary changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from pyVmomi import vim, vmodl

from beachhead.agent.errors import BeachheadError
from beachhead.agent.vsphere.connection import VSphereError
from beachhead.agent.vsphere.states import VmState

if TYPE_CHECKING:
    from beachhead.agent.vsphere.connection import VCenter

log = structlog.get_logger("beachhead.vsphere.watcher")

WAIT_S = 10  # WaitForUpdatesEx's longest wait: the loop checks for shutdown this often
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)
FIRST_STATE_TIMEOUT_S = 30.0
PROPERTIES = (
    "name",
    "runtime.powerState",
    "guest.toolsRunningStatus",
    "guest.guestOperationsReady",
    "guest.ipAddress",
    "guest.net",
    "guest.guestFamily",
    "config.guestId",
)
TASK_PROPERTIES = ("info.state", "info.error")
TASK_ENDED = ("success", "error")
EVENT_TYPES = (
    "CustomizationStartedEvent",
    "CustomizationSucceeded",
    "CustomizationFailed",
    "CustomizationLinuxIdentityFailed",
    "CustomizationNetworkSetupFailed",
    "CustomizationSysprepFailed",
    "CustomizationUnknownFailure",
    "VmReconfiguredEvent",
)


class EventKind(StrEnum):
    """What happened to a watched VM."""

    POWERED_ON = "powered_on"
    POWERED_OFF = "powered_off"
    TOOLS_RUNNING = "tools_running"
    TOOLS_STOPPED = "tools_stopped"
    GUESTOPS_READY = "guestops_ready"
    GUESTOPS_UNAVAILABLE = "guestops_unavailable"
    IP_ASSIGNED = "ip_assigned"
    CUSTOMIZATION_STARTED = "customization_started"
    CUSTOMIZATION_SUCCEEDED = "customization_succeeded"
    CUSTOMIZATION_FAILED = "customization_failed"
    RECONFIGURED = "reconfigured"


@dataclass(frozen=True)
class GuestNic:
    """One guest network adapter as VMware Tools reports it."""

    mac: str
    addresses: tuple[str, ...]
    network: str = ""


@dataclass(frozen=True)
class VmEvent:
    """A change of a watched VM, with what it changed to (``detail``)."""

    kind: EventKind
    vm: str
    name: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VmSnapshot:
    """A watched VM's state as last reported."""

    vm: str
    name: str = ""
    power_state: str = ""
    tools_running_status: str = ""
    guestops_ready: bool = False
    ip: str = ""
    net: tuple[GuestNic, ...] = ()
    guest_family: str = ""
    guest_id: str = ""

    def satisfies(self, state: VmState) -> bool:
        """Whether this VM is in ``state``."""
        if state is VmState.POWERED_ON:
            return self.power_state == "poweredOn"
        if state is VmState.TOOLS_RUNNING:
            return self.tools_running_status == "guestToolsRunning"
        if state is VmState.GUESTOPS_READY:
            return self.guestops_ready
        return bool(self.ip) and not self.ip.startswith(("169.254.", "fe80:"))


class WatcherClosed(BeachheadError):
    """The watcher was closed while something waited on it."""


@dataclass(frozen=True)
class TaskOutcome:
    """How a vCenter task ended: ``success`` or ``error`` (with vCenter's fault)."""

    state: str
    error: Any = None

    @property
    def fault_text(self) -> str:
        """The fault's message, for errors."""
        if self.error is None:
            return self.state
        return str(getattr(self.error, "msg", None) or type(self.error).__name__)


class ListViewMembers:
    """Which objects one list view should hold, sent to vCenter in batches: the adds
    and removes that arrive while a ``ModifyListView`` call is under way go together in
    the next one. The wanted set is the truth; a rebuilt view starts from it."""

    def __init__(self, vcenter: VCenter) -> None:
        self.vcenter = vcenter
        self.view: Any = None
        self.wanted: dict[str, Any] = {}  # moref id -> managed object
        self._sent: dict[str, Any] = {}
        self._unresolved: set[str] = set()
        self._sending: asyncio.Future[None] | None = None

    def rebuilt(self, view: Any, members: dict[str, Any]) -> None:
        """A new view, made holding ``members`` (a copy of :attr:`wanted` taken before)."""
        self.view, self._sent = view, members

    def add(self, obj: Any) -> None:
        """Want ``obj`` in the view (sent by the next :meth:`sync`)."""
        self.wanted[obj._moId] = obj
        self._unresolved.discard(obj._moId)

    def discard(self, obj: Any) -> None:
        """No longer want ``obj`` (sent with the next batch, whenever that is)."""
        self.wanted.pop(obj._moId, None)

    async def sync(self, obj: Any) -> None:
        """Return once ``obj`` is in the view, sending the pending batch when no call is
        under way (else waiting for that one, then sending what it did not carry).
        Raises :class:`VSphereError` when vCenter does not know the object."""
        while obj._moId not in self._sent:
            if obj._moId in self._unresolved:
                self.discard(obj)
                raise VSphereError(f"{obj._moId}: vCenter has no such object (deleted?)")
            if self._sending is None:
                self._sending = asyncio.ensure_future(self._send())
            await asyncio.shield(self._sending)

    async def _send(self) -> None:
        try:
            view = self.view
            added = [obj for key, obj in self.wanted.items() if key not in self._sent]
            removed = [obj for key, obj in self._sent.items() if key not in self.wanted]
            if not (added or removed):
                return
            unresolved = await self.vcenter.call(view.ModifyListView, added or None, removed or None)
            if view is not self.view:
                return  # rebuilt meanwhile, from the wanted set
            missing = {obj._moId for obj in unresolved or ()}
            self._unresolved |= missing
            self._sent.update((obj._moId, obj) for obj in added if obj._moId not in missing)
            for obj in removed:
                self._sent.pop(obj._moId, None)
        finally:
            self._sending = None


def _nics(value: Any) -> tuple[GuestNic, ...]:
    return tuple(
        GuestNic(str(nic.macAddress or ""), tuple(str(a) for a in nic.ipAddress or ()), str(nic.network or ""))
        for nic in value or ()
    )


_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "name": ("name", lambda v: str(v or "")),
    "runtime.powerState": ("power_state", lambda v: str(v or "")),
    "guest.toolsRunningStatus": ("tools_running_status", lambda v: str(v or "")),
    "guest.guestOperationsReady": ("guestops_ready", bool),
    "guest.ipAddress": ("ip", lambda v: str(v or "")),
    "guest.net": ("net", _nics),
    "guest.guestFamily": ("guest_family", lambda v: str(v or "")),
    "config.guestId": ("guest_id", lambda v: str(v or "")),
}


def changes_between(before: VmSnapshot | None, after: VmSnapshot) -> list[VmEvent]:
    """The events that take a VM from ``before`` (None: first seen) to ``after``.
    A VM first seen reports nothing: its state is not news."""
    if before is None:
        return []
    events: list[VmEvent] = []

    def event(kind: EventKind, **detail: Any) -> None:
        events.append(VmEvent(kind, after.vm, after.name, detail))

    if before.power_state != after.power_state and after.power_state in ("poweredOn", "poweredOff"):
        event(EventKind.POWERED_ON if after.power_state == "poweredOn" else EventKind.POWERED_OFF)
    tools_before, tools_after = before.satisfies(VmState.TOOLS_RUNNING), after.satisfies(VmState.TOOLS_RUNNING)
    if tools_before != tools_after:
        event(EventKind.TOOLS_RUNNING if tools_after else EventKind.TOOLS_STOPPED)
    if before.guestops_ready != after.guestops_ready:
        event(EventKind.GUESTOPS_READY if after.guestops_ready else EventKind.GUESTOPS_UNAVAILABLE)
    if after.satisfies(VmState.IP_ASSIGNED) and (before.ip, before.net) != (after.ip, after.net):
        nics = [{"mac": nic.mac, "addresses": list(nic.addresses)} for nic in after.net]
        event(EventKind.IP_ASSIGNED, ip=after.ip, net=nics)
    return events


def _event_kind(event: Any) -> EventKind | None:
    if isinstance(event, vim.event.CustomizationStartedEvent):
        return EventKind.CUSTOMIZATION_STARTED
    if isinstance(event, vim.event.CustomizationSucceeded):
        return EventKind.CUSTOMIZATION_SUCCEEDED
    if isinstance(event, vim.event.CustomizationFailed):
        return EventKind.CUSTOMIZATION_FAILED
    if isinstance(event, vim.event.VmReconfiguredEvent):
        return EventKind.RECONFIGURED
    return None


class VmWatcher:
    """The event watcher of one vCenter (see the module's description)."""

    def __init__(self, vcenter: VCenter) -> None:
        self.vcenter = vcenter
        self._vms = ListViewMembers(vcenter)
        self._tasks = ListViewMembers(vcenter)  # the tasks callers wait on
        self._state: dict[str, VmSnapshot] = {}
        self._task_info: dict[str, dict[str, Any]] = {}  # what the task view reported so far
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Two property collectors, VMs in one, tasks and events in the other, each
        # followed by a WaitForUpdatesEx loop of its own (see _create_filters).
        self._collectors: list[Any] = []
        self._event_collector: Any = None
        self._last_event_key = -1
        self._closed = False

    # -- what callers use ----------------------------------------------------------------
    async def watch(self, vm: Any) -> VmSnapshot:
        """Start watching ``vm`` (a pyvmomi VirtualMachine) and return its current state."""
        self._start()
        await asyncio.wait_for(self._ready.wait(), FIRST_STATE_TIMEOUT_S)
        self._vms.add(vm)
        await self._vms.sync(vm)
        async with asyncio.timeout(FIRST_STATE_TIMEOUT_S):
            return await self.wait_until(vm, lambda snapshot: True)

    async def task_outcome(self, task: Any) -> TaskOutcome:
        """Wait for a vCenter task to end (the caller bounds the wait) and return how:
        the task joins the watcher's task view, so waiting costs no call of its own."""
        self._start()
        await asyncio.wait_for(self._ready.wait(), FIRST_STATE_TIMEOUT_S)
        self._tasks.add(task)
        try:
            await self._tasks.sync(task)
            async with self._changed:
                while (state := str(self._task_info.get(task._moId, {}).get("info.state") or "")) not in TASK_ENDED:
                    if self._closed:
                        raise WatcherClosed("the vCenter watcher was closed")
                    await self._changed.wait()
            return TaskOutcome(state, self._task_info[task._moId].get("info.error"))
        finally:
            self._tasks.discard(task)
            self._task_info.pop(task._moId, None)

    def state(self, vm: Any) -> VmSnapshot | None:
        """The last reported state of a watched VM."""
        return self._state.get(vm._moId)

    async def wait_for(self, vm: Any, state: VmState) -> VmSnapshot:
        """Return once ``vm`` is in ``state`` (at once when it already is); the caller
        bounds the wait (``asyncio.timeout``)."""
        await self.watch(vm)
        return await self.wait_until(vm, lambda snapshot: snapshot.satisfies(state))

    async def wait_until(self, vm: Any, predicate: Callable[[VmSnapshot], bool]) -> VmSnapshot:
        """Return the VM's state once ``predicate`` holds for it (the caller bounds the wait)."""
        async with self._changed:
            while True:
                if self._closed:
                    raise WatcherClosed("the vCenter watcher was closed")
                snapshot = self._state.get(vm._moId)
                if snapshot is not None and predicate(snapshot):
                    return snapshot
                await self._changed.wait()

    async def close(self) -> None:
        """Stop the loop; waiters get :class:`WatcherClosed`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._changed:
            self._changed.notify_all()

    # -- the loop ------------------------------------------------------------------------
    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"vcenter-watcher-{self.vcenter.address.host}")

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if not self._collectors:
                    vms, tasks = dict(self._vms.wanted), dict(self._tasks.wanted)
                    vm_view, task_view = await self.vcenter.call(self._create_filters, vms, tasks)
                    self._vms.rebuilt(vm_view, vms)
                    self._tasks.rebuilt(task_view, tasks)
                    self._ready.set()
                    attempt = 0
                await self._follow()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.vcenter.call(self._destroy_filters), timeout=5)
                raise
            except Exception as exc:  # the vCenter went away: log in again and rebuild
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                log.warning("watcher.reconnect", vcenter=self.vcenter.address.url, error=str(exc), delay_s=delay)
                self._collectors = []
                await asyncio.sleep(delay)
                with contextlib.suppress(Exception):
                    await self.vcenter.relogin()

    def _create_filters(self, vms: dict[str, Any], tasks: dict[str, Any]) -> tuple[Any, Any]:
        """The list views and their filters. The VMs' filter has a collector to itself:
        govmomi's simulator re-reads every filter of a collector for each change in its
        inventory, so at 500 VMs a collector shared with the task and event filters
        answered tens of seconds late; a real vCenter is indifferent to the split."""
        content = self.vcenter.content
        vm_collector = content.propertyCollector.CreatePropertyCollector()
        side_collector = content.propertyCollector.CreatePropertyCollector()
        self._collectors = [vm_collector, side_collector]
        spec = vmodl.query.PropertyCollector
        views = []
        for collector, members, kind, paths in (
            (vm_collector, vms, vim.VirtualMachine, PROPERTIES),
            (side_collector, tasks, vim.Task, TASK_PROPERTIES),
        ):
            view = content.viewManager.CreateListView(list(members.values()))
            collector.CreateFilter(
                spec.FilterSpec(
                    objectSet=[
                        spec.ObjectSpec(
                            obj=view,
                            skip=True,
                            selectSet=[
                                spec.TraversalSpec(name="view", type=vim.view.ListView, path="view", skip=False)
                            ],
                        )
                    ],
                    propSet=[spec.PropertySpec(type=kind, pathSet=list(paths))],
                ),
                True,
            )
            views.append(view)
        self._event_collector = content.eventManager.CreateCollectorForEvents(
            vim.event.EventFilterSpec(eventTypeId=list(EVENT_TYPES))
        )
        side_collector.CreateFilter(
            spec.FilterSpec(
                objectSet=[spec.ObjectSpec(obj=self._event_collector)],
                propSet=[spec.PropertySpec(type=vim.event.EventHistoryCollector, pathSet=["latestPage"])],
            ),
            True,
        )
        self._last_event_key = -1  # a new collector's first page is history again
        return views[0], views[1]

    def _destroy_filters(self) -> None:
        for obj, method in (
            (self._event_collector, "DestroyCollector"),
            (self._vms.view, "DestroyView"),
            (self._tasks.view, "DestroyView"),
            *((collector, "DestroyPropertyCollector") for collector in self._collectors),
        ):
            with contextlib.suppress(Exception):
                getattr(obj, method)()

    async def _follow(self) -> None:
        """Follow every collector at once; the first to fail stops the others."""
        loops = [asyncio.ensure_future(self._follow_collector(collector)) for collector in self._collectors]
        try:
            await asyncio.gather(*loops)
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _follow_collector(self, collector: Any) -> None:
        """Apply a new collector's updates, from its first (the current state) on."""
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=WAIT_S)
        version = ""
        while True:
            update = await self.vcenter.call(collector.WaitForUpdatesEx, version, options, long_poll=True)
            if update is None:
                continue
            version = update.version
            events: list[VmEvent] = []
            for filter_update in update.filterSet or ():
                for change in filter_update.objectSet or ():
                    events += self._apply(change)
            async with self._changed:
                self._changed.notify_all()
            for event in events:
                log.info("vm.event", kind=str(event.kind), vm=event.name, **event.detail)

    def _apply(self, change: Any) -> list[VmEvent]:
        if isinstance(change.obj, vim.event.EventHistoryCollector):
            return self._apply_events(change)
        if isinstance(change.obj, vim.Task):
            self._apply_task(change)
            return []
        moref = change.obj._moId
        if change.kind == "leave":
            self._state.pop(moref, None)
            return []
        before = self._state.get(moref)
        updates: dict[str, Any] = {}
        for item in change.changeSet or ():
            if item.name in _FIELDS:
                attribute, convert = _FIELDS[item.name]
                updates[attribute] = convert(item.val if item.op != "remove" else None)
        after = replace(before or VmSnapshot(moref), **updates)
        self._state[moref] = after
        return changes_between(before, after)

    def _apply_task(self, change: Any) -> None:
        moref = change.obj._moId
        if change.kind == "leave":
            self._task_info.pop(moref, None)
            return
        info = self._task_info.setdefault(moref, {})
        info.update((item.name, item.val if item.op != "remove" else None) for item in change.changeSet or ())

    def _apply_events(self, change: Any) -> list[VmEvent]:
        page = next((item.val for item in change.changeSet or () if item.name == "latestPage"), None) or []
        fresh = sorted((event for event in page if event.key > self._last_event_key), key=lambda e: e.key)
        first_page = self._last_event_key < 0
        if page:
            self._last_event_key = max(self._last_event_key, *(event.key for event in page))
        if first_page:
            return []  # history from before we watched is not news
        events = []
        for raw in fresh:
            kind = _event_kind(raw)
            moref = raw.vm.vm._moId if raw.vm is not None and raw.vm.vm is not None else None
            if kind is None or moref not in self._vms.wanted:
                continue
            name = self._state[moref].name if moref in self._state else raw.vm.name
            events.append(VmEvent(kind, moref, name, {"message": raw.fullFormattedMessage or ""}))
        return events
