"""``beachhead run --resume RUN_ID``: where each target of a failed or interrupted run
picks up again.

A target whose last result is ``ok`` is left alone. Every other target restarts at the
first step that did not complete, under the same run id, as the next attempt: steps that
succeeded before are reported as done in their attempt and not run again. A write the
journal recorded as intended but never as done (the process died mid-write) is first
checked against the guest by its step kind's operation (``recheck``: the file's sha256,
the extraConfig values, the published user-data); the outcome is journaled, and when
every write of the restart step turns out to be in place, the target starts after it.
A step skipped as not for the target's OS family (``skip_reason``) is neither done nor a
restart point: the next attempt decides again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from beachhead.agent.errors import BeachheadError
from beachhead.agent.journal import Journal, JournalEntry, RunDirectory
from beachhead.agent.plans import Plan
from beachhead.agent.targets import Target
from beachhead.agent.undo import UndoContext

log = structlog.get_logger("beachhead.resume")


@dataclass
class ResumePoint:
    """Where one target restarts: steps numbered below ``start_at`` are done, each in
    the attempt ``done_in`` gives."""

    target: Target
    start_at: int = 1
    done_in: dict[int, int] = field(default_factory=dict)


def last_results(run_dir: RunDirectory) -> dict[str, dict[str, Any]]:
    """Each target's latest result line in ``results.jsonl`` (a torn line is skipped)."""
    latest: dict[str, dict[str, Any]] = {}
    if not run_dir.results_path.exists():
        return latest
    for line in run_dir.results_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "target" in record:
            latest[str(record["target"])] = record
    return latest


def next_attempt(run_dir: RunDirectory) -> int:
    """The number of the attempt about to start: one past every attempt recorded."""
    attempts = [int(record.get("attempt", 1)) for record in last_results(run_dir).values()]
    attempts += [int(entry.intent.get("attempt", 1)) for entry in run_dir.entries()]
    return 1 + max(attempts, default=0)


def _restart_step(
    plan: Plan, target: Target, result: dict[str, Any] | None, entries: list[JournalEntry]
) -> ResumePoint | None:
    """Where a target restarts from its last result, else from its journal entries;
    None when it finished."""
    point = ResumePoint(target)
    if result is not None:
        if result.get("status") == "ok":
            return None
        attempt = int(result.get("attempt", 1))
        for step in result.get("steps", []):
            number = step.get("number")
            if number is None:
                continue  # the plan's waits are conditions: they are checked again
            if step.get("status") == "skipped" and step.get("skip_reason"):
                continue  # not for this target's OS: decided again, never a restart point
            if step.get("status") != "ok":
                point.start_at = int(number)
                break
            point.done_in[int(number)] = int(step.get("done_in_attempt") or attempt)
        else:
            point.start_at = len(plan.steps) + 1
        return point
    # No result: the process died. Restart at the last step the journal saw; the ones
    # before it had completed.
    numbers = [int(entry.intent["step"]) for entry in entries if entry.intent.get("step")]
    point.start_at = max(numbers, default=1)
    attempt = max((int(entry.intent.get("attempt", 1)) for entry in entries), default=1)
    point.done_in = dict.fromkeys(range(1, point.start_at), attempt)
    return point


async def resume_points(
    run_dir: RunDirectory, plan: Plan, targets: Sequence[Target], journal: Journal, undo: UndoContext
) -> list[ResumePoint]:
    """Where every unfinished target restarts, with its interrupted writes rechecked
    (and their outcome journaled)."""
    results = last_results(run_dir)
    entries = run_dir.entries()
    points = []
    for target in targets:
        mine = [entry for entry in entries if entry.intent.get("target") == target.name]
        point = _restart_step(plan, target, results.get(target.name), mine)
        if point is None:
            log.info("resume.left_alone", target=target.name)
            continue
        if await _interrupted_writes_in_place(point, mine, journal, undo):
            point.done_in[point.start_at] = max(int(e.intent.get("attempt", 1)) for e in mine)
            point.start_at += 1
        points.append(point)
    return points


async def _interrupted_writes_in_place(
    point: ResumePoint, entries: list[JournalEntry], journal: Journal, undo: UndoContext
) -> bool:
    """Recheck every write recorded as intent only and journal what was found; True
    when the restart step was cut short mid-write and all its writes are in place, so
    it completed."""
    in_place: dict[int, bool | None] = {}
    for entry in entries:
        if entry.outcome is not None:
            continue
        operation = undo.run.plugins.operations.get(entry.op)
        found: bool | None = None
        if operation is not None and operation.recheck is not None:
            try:
                found = await operation.recheck(entry, undo)
            except BeachheadError as exc:
                log.warning("resume.recheck_failed", seq=entry.seq, error=str(exc))
        if found is not None:
            journal.outcome(entry.seq, "done" if found else "failed", checked_on_resume=True)
        in_place[entry.seq] = found
        log.info("resume.rechecked", seq=entry.seq, op=entry.op, in_place=found)
    at_step = [entry for entry in entries if entry.intent.get("step") == point.start_at]
    cut_short = [entry for entry in at_step if entry.seq in in_place]
    if not cut_short:
        return False
    return all(in_place[entry.seq] for entry in cut_short) and all(
        entry.state == "done" for entry in at_step if entry.seq not in in_place
    )
