"""The library API: what a provisioning tool calls right after it created a VM.

    result = await customize("ssh://root@10.0.0.5?key=~/.ssh/id_ed25519", "plan.yaml")
    if not result.ok:
        ...

The CLI goes through :func:`run_plan` too, so both behave the same. Called as a
library (structlog not configured by the caller), Beachhead's events go through the
standard :mod:`logging` module, loggers ``beachhead.*``: silent unless the caller's
logging configuration shows them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beachhead.agent.context import RunContext
from beachhead.agent.engine import Engine, Progress, check_run_input
from beachhead.agent.errors import InputError
from beachhead.agent.journal import Journal, PathLike, RunDirectory, default_runs_dir
from beachhead.agent.logs import route_to_stdlib_logging
from beachhead.agent.plans import Plan, build_plan, load_plan
from beachhead.agent.registry import Plugins, default_plugins
from beachhead.agent.results import TargetResult
from beachhead.agent.resume import next_attempt, resume_points
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import Target, check_unique_names, parse_target
from beachhead.agent.undo import UndoContext


@dataclass(frozen=True)
class RunReport:
    """A finished run: its id, where its journal is, and one result per target."""

    run_id: str
    run_dir: Path
    results: list[TargetResult]
    journal_error: str | None = None  # the run stopped because its journal could not be written
    left_alone: tuple[str, ...] = ()  # resumed: targets that had finished in an earlier attempt
    interrupted: bool = False  # cancelled (Run.cancel, SIGINT): results hold the targets reported so far

    @property
    def ok(self) -> bool:
        """True when every target succeeded, every write was journaled and nothing was cut short."""
        return not self.interrupted and self.journal_error is None and all(result.ok for result in self.results)

    def to_json(self) -> dict[str, Any]:
        """The whole run as one object: what ``beachhead run --json`` prints per target
        (``results``, one such line each), with the run's own facts around it."""
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "ok": self.ok,
            "interrupted": self.interrupted,
            "journal_error": self.journal_error,
            "left_alone": list(self.left_alone),
            "results": [result.to_json() for result in self.results],
        }


PlanLike = str | Path | Plan | Mapping[str, Any]
"""A plan file's path, a :class:`Plan`, or Python data shaped as a plan file (see
:func:`beachhead.agent.plans.build_plan`)."""


def _as_plan(plan: PlanLike, plugins: Plugins) -> Plan:
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Mapping):
        return build_plan(plan, plugins=plugins)
    return load_plan(plan, plugins)


def _as_target(target: str | Target) -> Target:
    return target if isinstance(target, Target) else parse_target(target)


async def run_plan(
    plan: PlanLike,
    targets: Sequence[str | Target],
    *,
    settings: RunSettings | None = None,
    runs_dir: PathLike | None = None,
    plugins: Plugins | None = None,
    progress: Progress | None = None,
    on_run_dir: Callable[[RunDirectory], None] | None = None,
) -> RunReport:
    """Validate, then run ``plan`` on ``targets`` in a new journaled run directory.

    Bad input raises :class:`beachhead.agent.errors.InputError` before anything runs; failures on
    targets are reported in the results, not raised.
    """
    route_to_stdlib_logging()
    plugins = plugins or default_plugins()
    plan = _as_plan(plan, plugins)
    resolved = [_as_target(target) for target in targets]
    check_unique_names(resolved, "--target")
    check_run_input(plan, resolved, plugins, settings)
    run_dir = RunDirectory.create(
        default_runs_dir(runs_dir),
        {
            "plan": plan.name,
            "plan_file": str(plan.source) if plan.source else None,
            "targets": [{"name": t.name, "uri": t.uri} for t in resolved],
        },
    )
    if on_run_dir is not None:
        on_run_dir(run_dir)
    journal = Journal(run_dir)
    try:
        engine = Engine(plugins, run_dir, journal, settings, progress)
        results = await engine.run(plan, resolved)
    finally:
        journal.close()
    broken = str(journal.broken) if journal.broken is not None else None
    return RunReport(run_dir.run_id, run_dir.path, results, broken)


async def resume_run(
    run_id: str,
    *,
    plan: PlanLike | None = None,
    settings: RunSettings | None = None,
    runs_dir: PathLike | None = None,
    plugins: Plugins | None = None,
    progress: Progress | None = None,
) -> RunReport:
    """Continue run ``run_id`` that failed or was interrupted, as its next attempt (see
    :mod:`beachhead.agent.resume`): the plan and targets are the run's (a plan built in
    Python must be passed again), finished targets are left alone. Holds the run's lock,
    so an undo of the same run cannot interleave."""
    route_to_stdlib_logging()
    plugins = plugins or default_plugins()
    settings = settings or RunSettings()
    run_dir = RunDirectory.open(default_runs_dir(runs_dir), run_id)
    recorded = run_dir.metadata()
    if plan is None:
        if not recorded.get("plan_file"):
            raise InputError("--resume", run_id, "the run's plan was not read from a file: give it again")
        plan = recorded["plan_file"]
    plan = _as_plan(plan, plugins)
    source = str(run_dir.path / "run.json")
    targets = [
        parse_target(entry["uri"], source=source, where=f"target {entry['name']}") for entry in recorded["targets"]
    ]
    with run_dir.exclusive("resume"):
        journal = Journal(run_dir)
        try:
            attempt = next_attempt(run_dir)
            checking = RunContext(plugins, settings, run_dir, journal)
            rechecks = UndoContext(checking, force=False)
            try:
                points = await resume_points(run_dir, plan, targets, journal, rechecks)
            finally:
                await rechecks.close()
                await checking.close()
            results: list[TargetResult] = []
            if points:
                engine = Engine(plugins, run_dir, journal, settings, progress)
                done = {point.target.name: point.done_in for point in points}
                results = await engine.run(plan, [point.target for point in points], attempt=attempt, done_before=done)
        finally:
            journal.close()
    pending = {point.target.name for point in points}
    left_alone = tuple(target.name for target in targets if target.name not in pending)
    broken = str(journal.broken) if journal.broken is not None else None
    return RunReport(run_dir.run_id, run_dir.path, results, broken, left_alone)


async def customize(
    target: str | Target,
    plan: PlanLike,
    *,
    settings: RunSettings | None = None,
    runs_dir: PathLike | None = None,
) -> TargetResult:
    """Run ``plan`` on one freshly provisioned guest and return how it went."""
    report = await run_plan(plan, [target], settings=settings, runs_dir=runs_dir)
    return report.results[0]


def customize_sync(
    target: str | Target,
    plan: PlanLike,
    *,
    settings: RunSettings | None = None,
    runs_dir: PathLike | None = None,
) -> TargetResult:
    """:func:`customize` for callers without an event loop (a provisioning script)."""
    return asyncio.run(customize(target, plan, settings=settings, runs_dir=runs_dir))
