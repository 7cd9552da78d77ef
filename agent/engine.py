"""The workflow engine: runs a plan on many targets at once, step by step.

Each step is executed by the step kind that parsed it (a plugin, see
:mod:`beachhead.agent.stepkinds`), within its timeout, with a
:class:`beachhead.agent.context.StepContext` that selects the channel for the
capability it needs (see :mod:`beachhead.agent.selection`) and journals what it writes.
The engine knows no step kind, channel or server by name.

A step with an ``os:`` (see :class:`beachhead.agent.plans.Plan`) runs only on targets of
that OS family. Before anything runs it is checked only against targets it may run on
(a target whose declared OS is another family is left out); on a VM whose OS family is
not declared it is checked as if the VM were of the step's family, and at run time the
VM's own report decides. Where it does not apply the step is reported as skipped with
its ``skip_reason`` and writes nothing; when a VM's OS cannot be read (its vCenter is
unreachable), the step fails rather than guess.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import structlog

from beachhead.agent.context import RunContext, StepContext, TargetContext, resolve_os
from beachhead.agent.errors import BeachheadError, InputError, StepFailed
from beachhead.agent.journal import Journal, RunDirectory
from beachhead.agent.plans import Plan
from beachhead.agent.registry import Plugins
from beachhead.agent.results import FAILED, OK, SKIPPED, StepResult, TargetResult
from beachhead.agent.settings import RunSettings
from beachhead.agent.stepkinds import CheckContext, Step
from beachhead.agent.targets import OsFamily, Target

__all__ = ["Engine", "NoProgress", "Progress", "RunSettings", "check_run_input"]

log = structlog.get_logger("beachhead.engine")


class Progress(Protocol):
    """Receives progress as targets and steps start and finish (the rich display)."""

    def target_started(self, target: Target, total_steps: int) -> None:
        """A target's workflow began."""

    def step_started(self, target: Target, result: StepResult) -> None:
        """A step began on a target."""

    def step_finished(self, target: Target, result: StepResult) -> None:
        """A step that began on a target ended (``result.status`` says how)."""

    def target_finished(self, result: TargetResult) -> None:
        """A target's workflow ended, successfully or not."""


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def target_started(self, target: Target, total_steps: int) -> None:
        """Ignore."""

    def step_started(self, target: Target, result: StepResult) -> None:
        """Ignore."""

    def step_finished(self, target: Target, result: StepResult) -> None:
        """Ignore."""

    def target_finished(self, result: TargetResult) -> None:
        """Ignore."""


def _labelled(plan: Plan) -> list[tuple[str, Step, OsFamily | None]]:
    waits: list[tuple[str, Step, OsFamily | None]] = [(f"wait[{i}]", step, None) for i, step in enumerate(plan.wait, 1)]
    return waits + [(f"step {n} ({step.kind})", step, plan.os_of(n)) for n, step in enumerate(plan.steps, 1)]


def check_run_input(
    plan: Plan, targets: Sequence[Target], plugins: Plugins, settings: RunSettings | None = None
) -> None:
    """Everything that can be rejected before anything runs: no targets, an OS family
    the plan and a target disagree on, a step no channel can serve on a target, and
    what each step kind's own ``check`` refuses. A step with an ``os:`` is checked only
    against the targets it may run on."""
    if not targets:
        raise InputError("--target", None, "no targets: give --target URI or --targets FILE")
    for target in targets:
        resolve_os(plan, target)  # the plan and the target must not disagree
    everywhere = CheckContext(plan, targets, settings or RunSettings(), plugins)
    for where, step, step_os in _labelled(plan):
        kind = plugins.steps[step.kind]
        context = dataclasses.replace(everywhere, step_os=step_os)
        for target in targets:
            declared = target.os or plan.os
            if step_os is not None and declared is not None and declared != step_os:
                continue  # skipped on that target
            reason = kind.check(step, target, context)
            if reason is not None:
                raise InputError(plan.source, where, reason)
            capability = kind.capability
            if capability is None:
                continue
            os_family = context.os_of(target)
            if not plugins.candidates(capability, target, os_family, plan.channels):
                raise InputError(
                    plan.source,
                    where,
                    f"no channel can {capability} on {target.name} ({target.scheme}://, {os_family})",
                )


class Engine:
    """Runs plans on targets, with bounded concurrency, into one run directory."""

    def __init__(
        self,
        plugins: Plugins,
        run_dir: RunDirectory,
        journal: Journal,
        settings: RunSettings | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.plugins = plugins
        self.run_dir = run_dir
        self.journal = journal
        self.settings = settings or RunSettings()
        self.progress = progress or NoProgress()

    async def run(
        self,
        plan: Plan,
        targets: Sequence[Target],
        *,
        attempt: int = 1,
        done_before: Mapping[str, Mapping[int, int]] | None = None,
    ) -> list[TargetResult]:
        """Run ``plan`` on every target, at most ``concurrency`` at a time. A resumed
        run is a later ``attempt``; ``done_before`` maps a target's name to the steps it
        completed in earlier attempts (step number -> attempt), which are not run again."""
        check_run_input(plan, targets, self.plugins, self.settings)
        limit = asyncio.Semaphore(self.settings.concurrency)
        log.info("run.start", run_id=self.run_dir.run_id, plan=plan.name, targets=len(targets), attempt=attempt)
        context = RunContext(self.plugins, self.settings, self.run_dir, self.journal)
        context.attempt = attempt

        async def one(target: Target) -> TargetResult:
            done = (done_before or {}).get(target.name, {})
            workflow = TargetWorkflow(self, TargetContext(context, plan, target), done)
            try:
                await limit.acquire()
            except asyncio.CancelledError:
                workflow.report(interrupted="interrupted before it started")
                raise
            try:
                return await workflow.execute()
            finally:
                limit.release()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(target)) for target in targets]
        finally:
            await context.close()
        results = [task.result() for task in tasks]
        log.info(
            "run.finish",
            run_id=self.run_dir.run_id,
            ok=sum(r.ok for r in results),
            failed=sum(not r.ok for r in results),
        )
        return results


class TargetWorkflow:
    """One plan on one target: its steps, in order, until one fails."""

    def __init__(self, engine: Engine, context: TargetContext, done_before: Mapping[int, int] | None = None) -> None:
        self.engine = engine
        self.context = context
        self.plan = context.plan
        self.target = context.target
        self.log = context.log
        self.result = TargetResult(self.target.name, self.target.uri, engine.run_dir.run_id)
        self.result.attempt = context.run.attempt
        self.steps = self._steps()
        self.result.steps = [step_result for _, step_result in self.steps]
        for _, step_result in self.steps:
            if step_result.number is not None and step_result.number in (done_before or {}):
                step_result.status = OK
                step_result.done_in_attempt = (done_before or {})[step_result.number]

    def _steps(self) -> list[tuple[Step, StepResult]]:
        steps: list[tuple[Step, StepResult]] = [
            (wait, StepResult(None, wait.kind, f"plan {wait.describe()}")) for wait in self.plan.wait
        ]
        for number, step in enumerate(self.plan.steps, 1):
            steps.append((step, StepResult(number, step.kind, step.describe())))
        return steps

    async def execute(self) -> TargetResult:
        """Run every step until one fails; the rest are reported as skipped. Interrupted
        (Ctrl-C, SIGTERM), the target's result so far is still reported."""
        result = self.result
        started = time.monotonic()
        self.engine.progress.target_started(self.target, len(self.steps))
        self.log.info("target.start", uri=self.target.uri, os=str(self.context.os), steps=len(self.steps))
        current: StepResult | None = None
        try:
            for step, step_result in self.steps:
                if step_result.done_in_attempt is not None:
                    continue  # done in an earlier attempt of this run
                current = step_result
                if not await self.applies(step_result):
                    if step_result.status == FAILED:
                        result.error = f"{_step_label(step_result)}: {step_result.error}"
                        break
                    continue
                broken = self.engine.journal.broken
                if broken is not None:  # stop before the next write: it could not be recorded
                    result.error = f"{_step_label(step_result)}: not run: {broken}"
                    break
                self.engine.progress.step_started(self.target, step_result)
                try:
                    await self.run_step(step, step_result)
                finally:
                    self.engine.progress.step_finished(self.target, step_result)
                if step_result.channel and result.channel is None:
                    result.channel = step_result.channel
                if step_result.status == FAILED:
                    result.error = f"{_step_label(step_result)}: {step_result.error}"
                    break
            else:
                result.status = OK
        except asyncio.CancelledError:
            result.duration_s = time.monotonic() - started
            self.report(interrupted=f"{_step_label(current)}: interrupted" if current else "interrupted")
            raise
        except Exception as exc:  # a bug must not take the other targets down with it
            self.log.exception("target.internal_error")
            result.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            await self.context.selector.close()
            result.duration_s = time.monotonic() - started
        self.report()
        return result

    def report(self, *, interrupted: str | None = None) -> None:
        """Record the target's result in the run directory and hand it to the progress
        display (and ``--json``); ``interrupted`` marks a run cut short."""
        result = self.result
        if interrupted is not None:
            result.status = FAILED
            result.error = result.error or interrupted
        try:
            self.engine.run_dir.record_result(result.to_json())
        except BeachheadError as exc:
            self.log.error("target.result_unwritable", error=str(exc))
        self.log.info("target.finish", status=result.status, error=result.error, duration_s=round(result.duration_s, 3))
        self.engine.progress.target_finished(result)

    async def applies(self, result: StepResult) -> bool:
        """Whether the step of ``result`` is for this target's OS family (a step without
        ``os:`` always is). When it is not, ``result`` says skipped and why; when the
        family cannot be told (a VM whose vCenter is unreachable), ``result`` fails."""
        wanted = self.plan.os_of(result.number) if result.number is not None else None
        if wanted is None:
            return True
        family = await self.context.known_os()
        if family is None:
            result.status = FAILED
            result.error = (
                f"os: {wanted}: cannot tell whether the step applies: the OS family of "
                f"{self.target.name} is not known ({self.context.vm_problem})"
            )
            self.log.error("step.os_unknown", step=result.number, kind=result.kind, error=result.error)
            return False
        if family == wanted:
            return True
        result.status = SKIPPED
        result.skip_reason = f"os: {wanted}, and {self.target.name} is {family} ({self.context.os_source})"
        self.log.info("step.skipped", step=result.number, kind=result.kind, reason=result.skip_reason)
        return False

    async def run_step(self, step: Step, result: StepResult) -> None:
        """Run one step within its timeout and fill in ``result``."""
        timeout = step.timeout or self.plan.timeout or self.engine.settings.step_timeout
        context = StepContext(self.context, result, timeout)
        context.log.info("step.start", description=result.description, timeout_s=timeout)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self.engine.plugins.steps[step.kind].execute(step, context)
            if result.status != FAILED:
                result.status = OK
        except TimeoutError:
            result.status = FAILED
            result.error = f"timed out after {timeout:g}s"
        except StepFailed as exc:
            result.status = FAILED
            result.error = exc.reason
            if exc.exit_status_of_command is not None:
                result.exit_code = exc.exit_status_of_command
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
            context.log.info(
                "step.finish",
                status=result.status,
                channel=result.channel,
                exit_code=result.exit_code,
                error=result.error,
                duration_s=round(result.duration_s, 3),
            )


def _step_label(result: StepResult) -> str:
    return f"step {result.number} ({result.kind})" if result.number else f"plan wait ({result.description})"
