"""A run started in the background, for a caller that wants to follow it as it goes.

    run = start_run(plan, targets)
    async for event in run.events():
        print(event.kind, event.target, event.step.status if event.step else "")
    report = await run.wait()

:func:`start_run` returns at once with a :class:`Run`: its :meth:`Run.events` stream
(every stream from the first event, so late consumers miss nothing), :meth:`Run.cancel`
and :meth:`Run.wait`. A cancelled run ends as an interrupted one does on SIGINT: the
operation in flight is journaled as ``interrupted``, every target still reports what it
did, and the journal stays one that ``beachhead undo`` and ``beachhead run --resume``
read. Cancelling the task that awaits :meth:`Run.wait` cancels the run too.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from beachhead.agent.api import PlanLike, RunReport, run_plan
from beachhead.agent.engine import Progress
from beachhead.agent.journal import PathLike, RunDirectory
from beachhead.agent.registry import Plugins
from beachhead.agent.results import StepResult, TargetResult
from beachhead.agent.secrets import REDACTOR
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import Target

EventKind = Literal["run_started", "target_started", "step_started", "step_finished", "target_finished", "run_finished"]


@dataclass(frozen=True)
class RunEvent:
    """Something that happened in a run. ``target`` names the target (None for the run's
    own events); ``step`` is the step's result as it stood then (status ``running`` at
    ``step_started``); ``result`` a finished target's, ``report`` the finished run's."""

    kind: EventKind
    run_id: str
    target: str | None = None
    step: StepResult | None = None
    result: TargetResult | None = None
    report: RunReport | None = None
    total_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (step and result as ``beachhead run --json`` has them)."""
        record: dict[str, Any] = {"event": self.kind, "run_id": self.run_id}
        if self.target is not None:
            record["target"] = self.target
        if self.total_steps is not None:
            record["total_steps"] = self.total_steps
        if self.step is not None:
            record["step"] = REDACTOR.redact(self.step.to_json())
        if self.result is not None:
            record["result"] = self.result.to_json()
        if self.report is not None:
            record["report"] = self.report.to_json()
        return record


class Run:
    """A run in progress: follow it with :meth:`events`, stop it with :meth:`cancel`,
    get its :class:`RunReport` with :meth:`wait` (or ``await run``)."""

    def __init__(self, progress: Progress | None = None) -> None:
        self._inner = progress
        self._history: list[RunEvent] = []
        self._listeners: list[asyncio.Queue[RunEvent | None]] = []
        self._results: list[TargetResult] = []
        self._run_dir: RunDirectory | None = None
        self._cancelling = False
        self._task: asyncio.Task[RunReport] | None = None

    @property
    def run_id(self) -> str | None:
        """The run's id, once its run directory exists (None before, or when bad input
        stopped it first)."""
        return self._run_dir.run_id if self._run_dir is not None else None

    @property
    def done(self) -> bool:
        """True once the run has finished, failed on bad input or been cancelled."""
        return self._task is not None and self._task.done()

    async def events(self) -> AsyncIterator[RunEvent]:
        """Every event of the run from its start, then each as it happens, until
        ``run_finished`` (which carries the report). A run stopped by bad input before
        it began ends the stream without events; :meth:`wait` raises the error."""
        queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
        for event in self._history:
            queue.put_nowait(event)
        if self.done:
            queue.put_nowait(None)
        else:
            self._listeners.append(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            if queue in self._listeners:
                self._listeners.remove(queue)

    def cancel(self) -> None:
        """Stop the run: the steps in flight are interrupted and journaled as such; the
        report (:meth:`wait`) then says ``interrupted``."""
        if self._task is not None and not self._task.done():
            self._cancelling = True
            self._task.cancel()

    async def wait(self) -> RunReport:
        """The run's report once it has ended; raises :class:`InputError` for bad input."""
        assert self._task is not None, "start the run with start_run()"
        return await self._task

    def __await__(self) -> Any:
        return self.wait().__await__()

    # -- what the engine reports (a Progress) ------------------------------------------------
    def target_started(self, target: Target, total_steps: int) -> None:
        """Record the event (and hand it to the caller's own progress display)."""
        if self._inner is not None:
            self._inner.target_started(target, total_steps)
        self._publish(RunEvent("target_started", self._id(), target.name, total_steps=total_steps))

    def step_started(self, target: Target, result: StepResult) -> None:
        """Record the event."""
        if self._inner is not None:
            self._inner.step_started(target, result)
        self._publish(RunEvent("step_started", self._id(), target.name, step=_snapshot(result, "running")))

    def step_finished(self, target: Target, result: StepResult) -> None:
        """Record the event."""
        if self._inner is not None:
            self._inner.step_finished(target, result)
        self._publish(RunEvent("step_finished", self._id(), target.name, step=_snapshot(result)))

    def target_finished(self, result: TargetResult) -> None:
        """Record the event and keep the result for an interrupted run's report."""
        if self._inner is not None:
            self._inner.target_finished(result)
        self._results.append(result)
        self._publish(RunEvent("target_finished", self._id(), result.target, result=result))

    # -- internals ---------------------------------------------------------------------------
    def _id(self) -> str:
        return self.run_id or ""

    def _started(self, run_dir: RunDirectory) -> None:
        self._run_dir = run_dir
        self._publish(RunEvent("run_started", run_dir.run_id))

    def _publish(self, event: RunEvent | None) -> None:
        """Hand ``event`` to every stream; None ends them."""
        if event is not None:
            self._history.append(event)
        for queue in self._listeners:
            queue.put_nowait(event)

    async def _drive(self, plan: PlanLike, targets: Sequence[str | Target], **options: Any) -> RunReport:
        try:
            try:
                report = await run_plan(plan, targets, progress=self, on_run_dir=self._started, **options)
            except asyncio.CancelledError:
                if not self._cancelling or self._run_dir is None:
                    raise
                report = RunReport(self._run_dir.run_id, self._run_dir.path, list(self._results), interrupted=True)
            self._publish(RunEvent("run_finished", report.run_id, report=report))
            return report
        finally:
            self._publish(None)


def _snapshot(result: StepResult, status: str | None = None) -> StepResult:
    """A copy of ``result`` as it stands, so later changes do not rewrite past events."""
    copy = dataclasses.replace(result, channels_tried=list(result.channels_tried))
    if status is not None:
        copy.status = status
    return copy


def start_run(
    plan: PlanLike,
    targets: Sequence[str | Target],
    *,
    settings: RunSettings | None = None,
    runs_dir: PathLike | None = None,
    plugins: Plugins | None = None,
    progress: Progress | None = None,
) -> Run:
    """Start running ``plan`` on ``targets`` in the background (in the running event
    loop) and return its :class:`Run` at once. Bad input surfaces from :meth:`Run.wait`."""
    run = Run(progress)
    run._task = asyncio.get_running_loop().create_task(
        run._drive(plan, targets, settings=settings, runs_dir=runs_dir, plugins=plugins), name="beachhead-run"
    )
    return run
