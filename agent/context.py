"""The explicit context a run hands to its targets, channels and step kinds.

- :class:`RunContext`: what every target of one run shares (settings, plugins, run
  directory, journal, the vCenter sessions, opened on first use).
- :class:`TargetContext`: one target in that run: its OS family, the VM's last reported
  state (from the vCenter's one watcher), the address network channels reach it at, and
  its channel selector.
- :class:`StepContext`: one step on that target: the channel for a capability, the
  journal, the step's result.

Nothing here imports pyVmomi or aiohttp until a target needs a vCenter, so a run over
SSH only starts quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from beachhead.agent.channel import Capability, Unmet
from beachhead.agent.errors import BeachheadError, ChannelError, InputError
from beachhead.agent.journal import Journal, RunDirectory
from beachhead.agent.output import OutputSink
from beachhead.agent.plans import Plan
from beachhead.agent.registry import Plugins
from beachhead.agent.results import StepResult
from beachhead.agent.selection import ChannelSelector
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import OsFamily, Target, preferred_address

if TYPE_CHECKING:
    from beachhead.agent.vsphere.connection import VCenter, VCenterPool
    from beachhead.agent.vsphere.watcher import VmSnapshot
    from beachhead.agent.vsphere.wirelog import WireLog

T = TypeVar("T")
log = structlog.get_logger("beachhead.engine")


def resolve_os(plan: Plan, target: Target) -> OsFamily:
    """The OS family to render for: the target's, else the plan's, else Linux (a VM's
    own report replaces that last default once it is known)."""
    if target.os and plan.os and target.os != plan.os:
        raise InputError(
            plan.source, "os", f"the plan is for {plan.os} but target {target.name} declares os={target.os}"
        )
    return target.os or plan.os or OsFamily.LINUX


class RunContext:
    """What the targets of one run share."""

    def __init__(
        self,
        plugins: Plugins,
        settings: RunSettings,
        run_dir: RunDirectory | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.plugins = plugins
        self.settings = settings
        self._run_dir = run_dir
        self._journal = journal
        self.attempt = 1  # which attempt of the run this is (beachhead run --resume)
        self.wire_log: WireLog | None = None
        if settings.wire_log is not None:
            from beachhead.agent.vsphere.wirelog import WireLog

            self.wire_log = WireLog(settings.wire_log)
        self._vcenters: VCenterPool | None = None

    @property
    def run_dir(self) -> RunDirectory:
        """The run's directory (a context without one only looks, as ``beachhead channels``)."""
        if self._run_dir is None:
            raise BeachheadError("this context has no run directory: it cannot write")
        return self._run_dir

    @property
    def journal(self) -> Journal:
        """The run's journal."""
        if self._journal is None:
            raise BeachheadError("this context has no journal: it cannot write")
        return self._journal

    @property
    def run_id(self) -> str | None:
        """The run's id, if it has a run directory."""
        return self._run_dir.run_id if self._run_dir is not None else None

    @property
    def vcenters(self) -> VCenterPool:
        """The run's vCenter sessions, one per vCenter, opened on first use."""
        if self._vcenters is None:
            from beachhead.agent.vsphere.connection import VCenterPool

            self._vcenters = VCenterPool(self.wire_log)
        return self._vcenters

    async def close(self) -> None:
        """Close the vCenter sessions and the wire log."""
        try:
            if self._vcenters is not None:
                await self._vcenters.close()
        finally:
            if self.wire_log is not None:
                self.wire_log.close()


class TargetContext:
    """One target in a run: what the channels and steps know about it now."""

    def __init__(self, run: RunContext, plan: Plan, target: Target) -> None:
        self.run = run
        self.plan = plan
        self.target = target
        self.os = resolve_os(plan, target)
        self._os_declared = target.os is not None or plan.os is not None
        #: Where ``os`` comes from, for messages: the target, the plan, the VM's report
        #: (once known), or the default.
        self.os_source = (
            "declared by the target"
            if target.os
            else "the plan's os:"
            if plan.os
            else "by default: neither target nor plan declares one"
        )
        self._vm: tuple[VCenter, Any] | None = None
        self.snapshot: VmSnapshot | None = None
        self.vm_problem: str | None = None  # why the VM's state is not known
        self.notes: dict[str, Any] = {}  # what one step kind leaves for a later one
        self.log = log.bind(run_id=run.run_id, target=target.name)
        self.selector = ChannelSelector(self)

    @property
    def settings(self) -> RunSettings:
        """The run's settings."""
        return self.run.settings

    @property
    def is_vm(self) -> bool:
        """True for a vsphere:// target."""
        return self.target.scheme == "vsphere"

    async def vm(self) -> tuple[VCenter, Any]:
        """The target's vCenter session and VM (vsphere:// targets), found once."""
        if self._vm is None:
            self._vm = await self.run.vcenters.vm_of(self.target, self.settings.connect_timeout)
        return self._vm

    async def refresh(self) -> None:
        """Bring the VM's state up to date from the vCenter's watcher (vsphere://
        targets); learn the guest's OS family from it when neither the target nor the
        plan declared one. A vCenter that cannot be reached is noted, not raised: the
        channels that need it say so."""
        if not self.is_vm:
            return
        try:
            vcenter, vm = await self.vm()
            self.snapshot = await vcenter.watcher.watch(vm)
            self.vm_problem = None
        except BeachheadError as exc:
            self.vm_problem = str(exc)
            return
        if not self._os_declared:
            from beachhead.agent.vsphere.states import os_family_of

            self.os = os_family_of(self.snapshot.guest_family, self.snapshot.guest_id)
            self.os_source = "as the VM reports"

    async def known_os(self) -> OsFamily | None:
        """The target's OS family for deciding whether a step with an ``os:`` applies:
        declared (target or plan), else what the VM reports (read now), else, for a
        target that is not a VM, the Linux default. None when it is a VM whose
        vCenter cannot be reached (see ``vm_problem``): its OS is not known."""
        if self._os_declared or not self.is_vm:
            return self.os
        await self.refresh()
        return self.os if self.snapshot is not None else None

    def powered_on_unmet(self, powered_off: str = "the VM is powered off") -> list[Unmet]:
        """Why a channel that needs the VM running cannot serve now: its vCenter cannot
        be reached, its state is not known yet, or it is powered off (``powered_off``
        says what that means for the channel); empty when the VM runs."""
        if self.vm_problem:
            return [Unmet(self.vm_problem)]
        if self.snapshot is None:
            return [Unmet("the VM's state is not known yet", transient=True)]
        from beachhead.agent.vsphere.states import VmState

        if not self.snapshot.satisfies(VmState.POWERED_ON):
            return [Unmet(powered_off, transient=True)]
        return []

    def guest_address(self) -> str | None:
        """Where network channels reach the guest: the target's ``address``, an ssh://
        target's host, else the address VMware Tools reports (IPv4 on the first NIC
        preferred); None while the guest has reported none."""
        if self.target.address:
            return self.target.address
        if not self.is_vm:
            return self.target.host
        if self.snapshot is None:
            return None
        nics = [(nic.mac, nic.addresses) for nic in self.snapshot.net]
        return preferred_address(nics, self.snapshot.ip)

    async def wait_for_change(self, within_s: float) -> bool:
        """Wait (at most ``within_s`` seconds) until the VM's reported state changes;
        True when it did. Targets that are not VMs never change on their own."""
        if not self.is_vm or self.snapshot is None or within_s <= 0:
            return False
        before = self.snapshot
        try:
            vcenter, vm = await self.vm()
            async with asyncio.timeout(within_s):
                self.snapshot = await vcenter.watcher.wait_until(vm, lambda now: now != before)
        except (TimeoutError, BeachheadError):
            return False
        return True


class StepContext:
    """One step on one target, as its step kind sees it."""

    def __init__(self, target: TargetContext, result: StepResult, timeout: float) -> None:
        self.target_context = target
        self.result = result
        self.timeout = timeout
        self.log = target.log.bind(step=result.number, kind=result.kind)

    # -- what the step kind reads -------------------------------------------------------------
    @property
    def target(self) -> Target:
        """The target."""
        return self.target_context.target

    @property
    def os(self) -> OsFamily:
        """The guest's OS family, as far as it is known now."""
        return self.target_context.os

    @property
    def plan(self) -> Plan:
        """The plan being run."""
        return self.target_context.plan

    @property
    def run(self) -> RunContext:
        """The run."""
        return self.target_context.run

    @property
    def run_dir(self) -> RunDirectory:
        """The run's directory (backups go there)."""
        return self.run.run_dir

    @property
    def settings(self) -> RunSettings:
        """The run's settings."""
        return self.run.settings

    @property
    def notes(self) -> dict[str, Any]:
        """What earlier steps on this target left for later ones."""
        return self.target_context.notes

    async def vm(self) -> tuple[VCenter, Any]:
        """The target's vCenter session and VM (vsphere:// targets)."""
        return await self.target_context.vm()

    # -- channels -------------------------------------------------------------------------------
    async def session(self, capability: Capability) -> Any:
        """The session of the channel selected now for ``capability`` (see
        :class:`beachhead.agent.selection.ChannelSelector`)."""
        session = await self.target_context.selector.session(capability, self.result)
        self.result.channel = session.channel
        return session

    async def over_channel(
        self, capability: Capability, action: Callable[[Any], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """Run ``action(session)`` over the channel selected for ``capability``. When the
        connection is lost and ``action`` is ``idempotent`` (a transfer, not a command
        that may already have run), the session is dropped and the action tried again,
        with backoff, on the channel selected then."""
        selector = self.target_context.selector
        attempts = self.settings.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            session = await self.session(capability)
            try:
                return await action(session)
            except ChannelError as exc:
                if not exc.retryable or attempt + 1 == attempts:
                    raise
                await selector.drop(session.channel)
                self.log.warning("step.retry", reason=exc.reason, attempt=attempt + 1)
                await asyncio.sleep(selector.backoff(attempt))
        raise AssertionError("unreachable")

    def output(self) -> OutputSink:
        """A sink for the output of a command this step runs: head and tail in memory,
        all of it in the run directory's ``output/TARGET/STEP.stdout`` and ``.stderr``."""
        if self.run.run_id is None:  # a context that only looks has no run directory
            return OutputSink()
        return OutputSink.for_step(self.run.run_dir.path, self.target.name, self.result.number, self.run.attempt)

    # -- the journal ----------------------------------------------------------------------------
    def reserve(self) -> int:
        """The sequence number of the next journal entry (backups are named by it)."""
        return self.run.journal.reserve()

    @contextlib.contextmanager
    def journaled(self, seq: int, op: str, **details: Any) -> Iterator[dict[str, Any]]:
        """Record the intent of operation ``op``, then ``done``/``failed``/``interrupted``;
        the yielded dict collects what the outcome entry says (``phase`` overrides
        ``done``)."""
        journal = self.run.journal
        where = {"step": self.result.number, "attempt": self.run.attempt}
        journal.intent(seq, self.target.name, self.target.uri, op, **where, **details)
        after: dict[str, Any] = {}
        try:
            yield after
        except asyncio.CancelledError:
            journal.outcome(seq, "interrupted")
            raise
        except BaseException as exc:
            journal.outcome(seq, "failed", error=str(exc))
            raise
        journal.outcome(seq, after.pop("phase", "done"), **after)
