"""The workflow engine: runs a plan on many targets at once, step by step.

Per target, each step gets the most preferred channel that has the capability it needs,
supports the target's OS and whose prerequisites hold; when a channel cannot connect the
next one is tried and the fallback is logged. Connection failures are retried with
exponential backoff; failed commands are not. Every write is journaled before and after
it happens, with what it replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import structlog

from beachhead.agent.channel import ChannelSession
from beachhead.agent.checksums import value_digest, value_digest_of_base64
from beachhead.agent.errors import BeachheadError, ChannelError, ChannelUnavailable, InputError, StepFailed
from beachhead.agent.journal import Journal, RunDirectory
from beachhead.agent.plans import (
    VM_STEPS,
    Capability,
    DownloadStep,
    ExtraConfigStep,
    GuestReport,
    Plan,
    PortOpen,
    PowerStep,
    ReportCondition,
    RunStep,
    Step,
    UploadStep,
    UserDataStep,
    Via,
    VmCondition,
    WaitCondition,
    WaitStep,
)
from beachhead.agent.pull import default_instance_id, guestinfo_values, instance_id_for, read_cloud_data
from beachhead.agent.registry import ChannelRegistry
from beachhead.agent.render import render
from beachhead.agent.results import FAILED, OK, StepResult, TargetResult
from beachhead.agent.targets import OsFamily, Target
from beachhead.agent.vsphere.connection import VCenter, current_pool, vcenter_pool
from beachhead.agent.vsphere.vmconfig import read_extra_config, set_power, vm_address, write_extra_config
from beachhead.agent.waits import wait_for_port
from beachhead.metadata_server.client import MetadataClient, read_token_file
from beachhead.metadata_server.events import GuestEvent
from beachhead.metadata_server.records import default_hostname

log = structlog.get_logger("beachhead.engine")


@dataclass(frozen=True)
class RunSettings:
    """How a run behaves; immutable defaults, overridden per call."""

    concurrency: int = 50
    step_timeout: float = 1800.0
    connect_timeout: float = 30.0
    retries: int = 3
    retry_delay: float = 0.5
    wire_log: Path | None = None
    metadata_server: str | None = None  # userdata via metadata, phoned_home / userdata_fetched waits
    metadata_token_file: Path | None = None


class Progress(Protocol):
    """Receives progress as targets and steps start and finish (the rich display)."""

    def target_started(self, target: Target, total_steps: int) -> None:
        """A target's workflow began."""

    def step_started(self, target: Target, result: StepResult) -> None:
        """A step began on a target."""

    def target_finished(self, result: TargetResult) -> None:
        """A target's workflow ended, successfully or not."""


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def target_started(self, target: Target, total_steps: int) -> None:
        """Ignore."""

    def step_started(self, target: Target, result: StepResult) -> None:
        """Ignore."""

    def target_finished(self, result: TargetResult) -> None:
        """Ignore."""


def resolve_os(plan: Plan, target: Target) -> OsFamily:
    """The OS family to render for: the target's, else the plan's, else Linux."""
    if target.os and plan.os and target.os != plan.os:
        raise InputError(
            plan.source, "os", f"the plan is for {plan.os} but target {target.name} declares os={target.os}"
        )
    return target.os or plan.os or OsFamily.LINUX


def check_run_input(
    plan: Plan, targets: Sequence[Target], registry: ChannelRegistry, settings: RunSettings | None = None
) -> None:
    """Everything that can be rejected before anything runs."""
    _check_metadata_server(plan, settings or RunSettings())
    if not targets:
        raise InputError("--target", None, "no targets: give --target URI or --targets FILE")
    for name in plan.channels:
        if name not in registry.channels:
            known = ", ".join(sorted(registry.channels))
            raise InputError(plan.source, "channels", f"unknown channel {name!r} (known: {known})")
    if len(targets) > 1 and plan.needs_per_target_downloads:
        shared = next(
            i for i, s in enumerate(plan.steps, 1) if isinstance(s, DownloadStep) and "{target}" not in s.dest
        )
        raise InputError(
            plan.source,
            f"step {shared} (download).dest",
            "with several targets every download would write the same file; put {target} in dest",
        )
    for target in targets:
        os_family = resolve_os(plan, target)
        _check_conditions(plan, target)
        for number, step in enumerate(plan.steps, 1):
            if isinstance(step, RunStep):
                try:
                    render(step.spec, os_family)
                except InputError as exc:
                    raise InputError(plan.source, f"step {number} ({exc.where})", exc.reason) from None
            if step.capability and not registry.candidates(step.capability, target, os_family, plan.channels):
                raise InputError(
                    plan.source,
                    f"step {number} ({step.kind})",
                    f"no channel can {step.capability} on {target.name} ({target.scheme}://, {os_family})",
                )


def _check_metadata_server(plan: Plan, settings: RunSettings) -> None:
    """Steps and waits that talk to the metadata server need its URL and admin token."""
    needs = [f"wait[{i}]" for i, c in enumerate(plan.wait, 1) if isinstance(c, ReportCondition)]
    for number, step in enumerate(plan.steps, 1):
        if (isinstance(step, UserDataStep) and step.via is Via.METADATA) or (
            isinstance(step, WaitStep) and isinstance(step.condition, ReportCondition)
        ):
            needs.append(f"step {number} ({step.kind})")
    if needs and not (settings.metadata_server and settings.metadata_token_file):
        raise InputError(
            plan.source,
            needs[0],
            "needs the metadata server: give --metadata-server URL and --metadata-token-file FILE "
            "(or BEACHHEAD_METADATA_SERVER and BEACHHEAD_METADATA_TOKEN_FILE)",
        )


def _check_conditions(plan: Plan, target: Target) -> None:
    """VM states and VM steps need a vsphere:// target."""
    if target.scheme == "vsphere":
        return
    waits = [(f"wait[{i}]", c) for i, c in enumerate(plan.wait, 1)]
    waits += [(f"step {n} (wait)", s.condition) for n, s in enumerate(plan.steps, 1) if isinstance(s, WaitStep)]
    for where, condition in waits:
        if isinstance(condition, VmCondition):
            raise InputError(
                plan.source,
                where,
                f"{condition.state} is a vSphere VM state; target {target.name} is {target.scheme}:// "
                "(give a vsphere:// target)",
            )
    for number, step in enumerate(plan.steps, 1):
        if isinstance(step, VM_STEPS) or (isinstance(step, UserDataStep) and step.via is Via.GUESTINFO):
            raise InputError(
                plan.source,
                f"step {number} ({step.kind})",
                f"{step.kind} acts on a vSphere VM; target {target.name} is {target.scheme}:// "
                "(give a vsphere:// target)",
            )


class Engine:
    """Runs plans on targets, with bounded concurrency, into one run directory."""

    def __init__(
        self,
        registry: ChannelRegistry,
        run_dir: RunDirectory,
        journal: Journal,
        settings: RunSettings | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.registry = registry
        self.run_dir = run_dir
        self.journal = journal
        self.settings = settings or RunSettings()
        self.progress = progress or NoProgress()

    async def run(self, plan: Plan, targets: Sequence[Target]) -> list[TargetResult]:
        """Run ``plan`` on every target, at most ``concurrency`` at a time."""
        check_run_input(plan, targets, self.registry, self.settings)
        limit = asyncio.Semaphore(self.settings.concurrency)
        log.info("run.start", run_id=self.run_dir.run_id, plan=plan.name, targets=len(targets))

        async def one(target: Target) -> TargetResult:
            async with limit:
                return await TargetWorkflow(self, plan, target).execute()

        wire_log = None
        if self.settings.wire_log is not None:
            from beachhead.agent.vsphere.wirelog import WireLog

            wire_log = WireLog(self.settings.wire_log)
        try:
            async with vcenter_pool(wire_log), asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(target)) for target in targets]
        finally:
            if wire_log is not None:
                wire_log.close()
        results = [task.result() for task in tasks]
        log.info(
            "run.finish",
            run_id=self.run_dir.run_id,
            ok=sum(r.ok for r in results),
            failed=sum(not r.ok for r in results),
        )
        return results


class TargetWorkflow:
    """One plan on one target: its channel sessions, its steps, its result."""

    def __init__(self, engine: Engine, plan: Plan, target: Target) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.journal = engine.journal
        self.plan = plan
        self.target = target
        self.os = resolve_os(plan, target)
        self.sessions: dict[str, ChannelSession] = {}
        self.unavailable: dict[str, ChannelUnavailable] = {}
        self.instance_id = default_instance_id(target.name)  # until a userdata step names one
        self.log = log.bind(run_id=engine.run_dir.run_id, target=target.name)

    def _steps(self) -> list[tuple[Step, StepResult]]:
        steps: list[tuple[Step, StepResult]] = []
        for condition in self.plan.wait:
            wait = WaitStep(condition)
            steps.append((wait, StepResult(None, wait.kind, f"plan {wait.describe()}")))
        for number, step in enumerate(self.plan.steps, 1):
            steps.append((step, StepResult(number, step.kind, step.describe())))
        return steps

    async def execute(self) -> TargetResult:
        """Run every step until one fails; the rest are reported as skipped."""
        result = TargetResult(self.target.name, self.target.uri, self.engine.run_dir.run_id)
        steps = self._steps()
        result.steps = [step_result for _, step_result in steps]
        started = time.monotonic()
        self.engine.progress.target_started(self.target, len(steps))
        self.log.info("target.start", uri=self.target.uri, os=str(self.os), steps=len(steps))
        try:
            for step, step_result in steps:
                self.engine.progress.step_started(self.target, step_result)
                await self.run_step(step, step_result)
                if step_result.channel and result.channel is None:
                    result.channel = step_result.channel
                if step_result.status == FAILED:
                    result.error = f"{_step_label(step_result)}: {step_result.error}"
                    break
            else:
                result.status = OK
        except Exception as exc:  # a bug must not take the other targets down with it
            self.log.exception("target.internal_error")
            result.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            await self._close_sessions()
            result.duration_s = time.monotonic() - started
        self.engine.run_dir.record_result(result.to_json())
        self.log.info("target.finish", status=result.status, error=result.error, duration_s=round(result.duration_s, 3))
        self.engine.progress.target_finished(result)
        return result

    async def _close_sessions(self) -> None:
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                await session.close()
        self.sessions.clear()

    # -- one step -------------------------------------------------------------------------
    async def run_step(self, step: Step, result: StepResult) -> None:
        """Run one step within its timeout and fill in ``result``."""
        timeout = step.timeout or self.plan.timeout or self.settings.step_timeout
        slog = self.log.bind(step=result.number, kind=step.kind)
        slog.info("step.start", description=result.description, timeout_s=timeout)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._dispatch(step, result)
            if result.status != FAILED:
                result.status = OK
        except TimeoutError:
            result.status = FAILED
            result.error = f"timed out after {timeout:g}s"
        except StepFailed as exc:
            result.status = FAILED
            result.error = exc.reason
            result.exit_code = (
                exc.exit_status_of_command if exc.exit_status_of_command is not None else result.exit_code
            )
            result.stdout = result.stdout or exc.stdout
            result.stderr = result.stderr or exc.stderr
        except BeachheadError as exc:
            result.status = FAILED
            result.error = str(exc)
        except asyncio.CancelledError:
            result.status = FAILED
            result.error = "interrupted"
            raise
        finally:
            result.duration_s = time.monotonic() - started
            slog.info(
                "step.finish",
                status=result.status,
                channel=result.channel,
                exit_code=result.exit_code,
                error=result.error,
                duration_s=round(result.duration_s, 3),
            )

    async def _dispatch(self, step: Step, result: StepResult) -> None:
        if isinstance(step, WaitStep):
            await self._wait(step.condition)
            return
        if isinstance(step, ExtraConfigStep):
            await self._extra_config(step)
            return
        if isinstance(step, PowerStep):
            await self._power(step)
            return
        if isinstance(step, UserDataStep):
            await self._userdata(step)
            return
        assert step.capability is not None
        # A command may have run before its connection dropped: only transfers are retried.
        attempts = 1 if isinstance(step, RunStep) else self.settings.retries + 1
        for attempt in range(attempts):
            session = await self._session_for(step.capability)
            result.channel = session.channel
            try:
                if isinstance(step, RunStep):
                    await self._run(session, step, result)
                elif isinstance(step, UploadStep):
                    await self._upload(session, step)
                else:
                    await self._download(session, step)
                return
            except ChannelError as exc:
                if not exc.retryable or attempt + 1 == attempts:
                    raise
                self.sessions.pop(session.channel, None)
                with contextlib.suppress(Exception):
                    await session.close()
                self.log.warning("step.retry", step=result.number, reason=exc.reason, attempt=attempt + 1)
                await asyncio.sleep(self._backoff(attempt))

    async def _vm(self) -> tuple[VCenter, Any]:
        return await current_pool().vm_of(self.target, self.settings.connect_timeout)

    async def _wait(self, condition: WaitCondition) -> None:
        if isinstance(condition, PortOpen):
            await wait_for_port(self.target.host, condition)
            return
        if isinstance(condition, ReportCondition):
            await self._wait_for_report(condition)
            return
        vcenter, vm = await self._vm()
        snapshot = await vcenter.watcher.wait_for(vm, condition.state)
        self.log.info(
            "vm.condition_met", condition=str(condition.state), power_state=snapshot.power_state, ip=snapshot.ip
        )

    # -- channels ---------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        return float(self.settings.retry_delay * 2**attempt * (0.5 + random.random()))

    async def _session_for(self, capability: Capability) -> ChannelSession:
        candidates = self.engine.registry.candidates(capability, self.target, self.os, self.plan.channels)
        reasons = []
        for candidate in candidates:
            name = candidate.info.name
            if name in self.sessions:
                return self.sessions[name]
            if not candidate.usable:
                reasons.append(f"{name}: needs {', '.join(candidate.unmet)}")
                continue
            if name in self.unavailable:
                reasons.append(str(self.unavailable[name]))
                continue
            try:
                session = await self._connect(name)
            except ChannelUnavailable as exc:
                self.unavailable[name] = exc
                reasons.append(str(exc))
                self.log.warning("channel.fallback", channel=name, reason=exc.reason)
                continue
            self.sessions[name] = session
            discovered = getattr(session, "os_family", None)
            if self.target.os is None and self.plan.os is None and discovered is not None:
                self.os = discovered  # read from the VM: render commands for what it runs
            return session
        raise ChannelUnavailable(
            "/".join(c.info.name for c in candidates) or "no channel",
            self.target.name,
            "; ".join(reasons) or f"no channel can {capability}",
        )

    async def _connect(self, channel: str) -> ChannelSession:
        for attempt in range(self.settings.retries + 1):
            try:
                session = await self.engine.registry.connect(channel, self.target, self.settings.connect_timeout)
                self.log.info("channel.connected", channel=channel, attempt=attempt + 1)
                return session
            except ChannelUnavailable as exc:
                if not exc.retryable or attempt == self.settings.retries:
                    raise
                delay = self._backoff(attempt)
                self.log.warning(
                    "channel.retry", channel=channel, reason=exc.reason, attempt=attempt + 1, delay_s=round(delay, 2)
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- journaled operations ----------------------------------------------------------------
    @contextlib.contextmanager
    def _journaled(self, seq: int, op: str, **details: Any) -> Iterator[dict[str, Any]]:
        """Record intent, then done/failed/interrupted; the yielded dict collects what the
        ``done`` entry should say."""
        self.journal.intent(seq, self.target.name, self.target.uri, op, **details)
        after: dict[str, Any] = {}
        try:
            yield after
        except asyncio.CancelledError:
            self.journal.outcome(seq, "interrupted")
            raise
        except BaseException as exc:
            self.journal.outcome(seq, "failed", error=str(exc))
            raise
        self.journal.outcome(seq, after.pop("phase", "done"), **after)

    async def _run(self, session: ChannelSession, step: RunStep, result: StepResult) -> None:
        spec = step.spec
        request = render(spec, self.os)
        seq = self.journal.reserve()
        what = {"command": spec.command} if spec.command else {"script": str(spec.script)}
        with self._journaled(
            seq, "run", channel=session.channel, **what, become=spec.become, env_names=list(spec.env)
        ) as after:
            outcome = await session.run(request)
            result.exit_code = outcome.exit_status
            result.stdout, result.stderr = outcome.stdout, outcome.stderr
            after.update(exit_status=outcome.exit_status, signal=outcome.signal)
            if outcome.pid is not None:
                after["pid"] = outcome.pid
            if not outcome.ok:
                after["phase"] = "failed"
                result.status = FAILED
                result.error = (
                    f"killed by signal {outcome.signal}" if outcome.signal else f"exit status {outcome.exit_status}"
                )

    async def _upload(self, session: ChannelSession, step: UploadStep) -> None:
        dest = step.remote_path(self.target.name)
        parent = str(PurePosixPath(dest).parent) if self.os is OsFamily.LINUX else str(PureWindowsPath(dest).parent)
        if parent not in (".", "/", "~") and not (await session.stat(parent)).exists:
            seq = self.journal.reserve()
            with self._journaled(seq, "make_dirs", channel=session.channel, path=parent) as after:
                after["created"] = await session.make_dirs(parent)
        before = await session.stat(dest)
        if before.exists and not before.is_file:
            raise StepFailed(step.describe(), f"{dest} exists and is not a regular file")
        seq = self.journal.reserve()
        replaces: dict[str, Any] = {"exists": before.exists}
        if before.exists:
            backup = self.engine.run_dir.backup_path(seq)
            saved = await session.get_file(dest, backup)
            replaces.update(size=saved.size, mode=before.mode, sha256=saved.sha256, backup=f"backups/{seq}")
        with self._journaled(
            seq, "put_file", channel=session.channel, path=dest, src=str(step.src), replaces=replaces
        ) as after:
            written = await session.put_file(step.src, dest, step.mode)
            after.update(size=written.size, sha256=written.sha256, mode=written.mode)

    async def _extra_config(self, step: ExtraConfigStep) -> None:
        vcenter, vm = await self._vm()
        before = await read_extra_config(vcenter, vm, step.values)
        seq = self.journal.reserve()
        # The values replaced go to a backup file, not the journal: they may be secrets.
        backup = self.engine.run_dir.save_json_backup(seq, before)
        with self._journaled(
            seq, "extra_config", channel="vsphere", keys=list(step.values), replaces={"backup": backup}
        ) as after:
            await write_extra_config(vcenter, vm, step.values, step.describe())
            after["sha256"] = {key: value_digest(value) for key, value in step.values.items()}

    # -- the pull channel -------------------------------------------------------------------
    def _metadata_client(self) -> MetadataClient:
        assert self.settings.metadata_server and self.settings.metadata_token_file
        return MetadataClient(self.settings.metadata_server, read_token_file(self.settings.metadata_token_file))

    async def _wait_for_report(self, condition: ReportCondition) -> None:
        event = GuestEvent.FETCHED if condition.report is GuestReport.USERDATA_FETCHED else GuestEvent.PHONED_HOME
        limit = condition.timeout or self.plan.timeout or self.settings.step_timeout
        at = await self._metadata_client().wait(self.instance_id, event, limit)
        if at is None:
            raise StepFailed(f"wait for {condition.describe()}", f"not reported within {limit:g}s")
        self.log.info("metadata.condition_met", condition=str(condition.report), instance=self.instance_id, at=at)

    async def _guest_address(self) -> tuple[str | None, str | None]:
        """The address and MAC the metadata server will see the guest at, as far as
        they are known now: a VM's first NIC and reported address; an ssh target's host."""
        if self.target.scheme == "vsphere":
            vcenter, vm = await self._vm()
            return await vcenter.call(vm_address, vm)
        infos = await asyncio.get_running_loop().getaddrinfo(self.target.host, None, type=socket.SOCK_STREAM)
        return (str(infos[0][4][0]) if infos else None), None

    async def _userdata(self, step: UserDataStep) -> None:
        data = read_cloud_data(step, str(self.plan.source))
        self.instance_id = instance_id_for(step, self.target.name)
        if step.via is Via.GUESTINFO:
            values = guestinfo_values(data, self.instance_id, default_hostname(self.instance_id))
            await self._extra_config(ExtraConfigStep(values))
            return
        client = self._metadata_client()
        ip, mac = await self._guest_address()
        previous = await client.data(self.instance_id)
        seq = self.journal.reserve()
        replaces: dict[str, Any] = {"exists": previous is not None}
        if previous is not None:
            replaces["backup"] = self.engine.run_dir.save_json_backup(seq, previous)
        with self._journaled(
            seq,
            "publish_userdata",
            channel="pull",
            server=client.url,
            token_file=str(self.settings.metadata_token_file),
            instance_id=self.instance_id,
            ip=ip,
            mac=mac,
            replaces=replaces,
        ) as after:
            await client.publish(
                self.instance_id,
                ip=ip,
                mac=mac,
                user_data=data.user_data,
                meta_data=data.meta_data_yaml(),
                vendor_data=data.vendor_data,
                network_config=data.network_config,
            )
            published = await client.data(self.instance_id)
            found = value_digest_of_base64((published or {}).get("user_data"))
            if found != data.user_data_sha256:
                raise StepFailed(
                    step.describe(), f"user-data sha256: published {data.user_data_sha256}, server has {found}"
                )
            after["sha256"] = data.user_data_sha256

    async def _power(self, step: PowerStep) -> None:
        vcenter, vm = await self._vm()
        seq = self.journal.reserve()
        with self._journaled(seq, "power", channel="vsphere", state="on" if step.on else "off") as after:
            after["before"] = await set_power(vcenter, vm, step.on, step.describe())

    async def _download(self, session: ChannelSession, step: DownloadStep) -> None:
        local = step.local_path(self.target.name)
        missing = [parent for parent in reversed(local.parents) if not parent.exists()]
        if missing:
            seq = self.journal.reserve()
            with self._journaled(
                seq, "make_dirs", channel=session.channel, path=str(local.parent), where="local"
            ) as after:
                for directory in missing:
                    directory.mkdir(exist_ok=True)
                after["created"] = [str(directory) for directory in missing]
        seq = self.journal.reserve()
        replaces: dict[str, Any] = {"exists": local.exists()}
        if local.is_file():
            backup = self.engine.run_dir.backup_path(seq)
            await asyncio.to_thread(shutil.copy2, local, backup)
            replaces.update(backup=f"backups/{seq}")
        with self._journaled(
            seq, "get_file", channel=session.channel, path=str(local), src=step.src, where="local", replaces=replaces
        ) as after:
            saved = await session.get_file(step.src, local)
            after.update(size=saved.size, sha256=saved.sha256)


def _step_label(result: StepResult) -> str:
    return f"step {result.number} ({result.kind})" if result.number else f"plan wait ({result.description})"
