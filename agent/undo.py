"""``beachhead undo``: revert what a run wrote, newest first.

Each journal entry is reverted by the journal operation of the step kind that wrote it
(:class:`beachhead.agent.stepkinds.Operation`): files a run replaced are restored from
the run's backups, files it created are deleted, extraConfig keys get back their values,
published user-data is republished or revoked; commands and power operations cannot be
undone and are listed. What changed again after the run is left alone unless ``force``
is given (:meth:`UndoContext.check_unchanged`, the one rule every operation applies).
Each reverted entry is journaled as ``undone``, so undo can be run again after a partial
failure and only does what is left.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from beachhead.agent.context import RunContext, TargetContext
from beachhead.agent.errors import BeachheadError, ChannelUnavailable
from beachhead.agent.journal import Journal, JournalEntry, RunDirectory
from beachhead.agent.plans import Plan
from beachhead.agent.registry import Plugins
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import Target, parse_target

if TYPE_CHECKING:
    from beachhead.agent.vsphere.connection import VCenter

log = structlog.get_logger("beachhead.undo")


@dataclass
class UndoReport:
    """What undo did, per journal entry."""

    undone: list[str] = field(default_factory=list)
    not_undoable: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    already_undone: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing that could be undone failed to be."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """The report as ``beachhead undo --json`` prints it."""
        return {
            "undone": self.undone,
            "not_undoable": self.not_undoable,
            "failed": self.failed,
            "already_undone": self.already_undone,
        }


class Conflict(BeachheadError):
    """What a run wrote changed again after it; undo would destroy someone else's change."""


def entry_label(entry: JournalEntry, plugins: Plugins) -> str:
    """``#SEQ TARGET: what`` for an entry, as undo reports and the journal list it."""
    return f"#{entry.seq} {entry.intent.get('target', '?')}: {describe_entry(entry, plugins)}"


def describe_entry(entry: JournalEntry, plugins: Plugins) -> str:
    """What an entry wrote, in the words of the step kind that wrote it."""
    operation = plugins.operations.get(entry.op)
    return operation.describe(entry) if operation else f"{entry.op} (no installed plugin knows this operation)"


class UndoContext:
    """What an operation's ``revert`` uses: the run's backups, sessions on the targets
    the journal names, their VMs, and the conflict rule."""

    def __init__(self, run: RunContext, *, force: bool) -> None:
        self.run = run
        self.force = force
        self._targets: dict[str, TargetContext] = {}
        self._plan = Plan(name=f"undo {run.run_dir.run_id}", steps=())

    @property
    def run_dir(self) -> RunDirectory:
        """The run being undone."""
        return self.run.run_dir

    def target(self, intent: dict[str, Any]) -> TargetContext:
        """The target an entry was written on, reached again through its URI (the same
        ``*_env`` variables must be set)."""
        uri = intent["target_uri"]
        if uri not in self._targets:
            target: Target = parse_target(uri, source="journal", where=f"target {intent['target']}")
            self._targets[uri] = TargetContext(self.run, self._plan, target)
        return self._targets[uri]

    async def session(self, intent: dict[str, Any]) -> Any:
        """A session of the channel the entry was written through."""
        context = self.target(intent)
        name = intent["channel"]
        selector = context.selector
        if name not in selector.sessions:
            channel = self.run.plugins.channels.get(name)
            if channel is None:
                raise ChannelUnavailable(name, context.target.name, "no installed plugin provides this channel")
            await context.refresh()
            selector.sessions[name] = await channel.connect(context)
        return selector.sessions[name]

    async def vm(self, intent: dict[str, Any]) -> tuple[VCenter, Any]:
        """The vCenter session and VM of the entry's target."""
        return await self.target(intent).vm()

    def check_unchanged(self, what: str, current: str | None, written: str | None, original: str | None) -> None:
        """The conflict rule: when what is there now (``current``, a digest; None when
        it is gone) is neither what the run wrote nor what it replaced, someone changed
        it after the run, and undo leaves it alone unless forced. An entry whose write
        never completed (``written`` None) may have half-happened: reverting it is safe."""
        if current is None or written is None or current in (written, original) or self.force:
            return
        raise Conflict(f"{what} changed after the run (now {current}); left alone (use --force)")

    async def close(self) -> None:
        """Close every session undo opened."""
        for context in self._targets.values():
            await context.selector.close()


class Undoer:
    """Reverts one run's journal entries through their step kinds' operations."""

    def __init__(self, run_dir: RunDirectory, plugins: Plugins, *, connect_timeout: float, force: bool) -> None:
        self.run_dir = run_dir
        self.plugins = plugins
        self.settings = RunSettings(connect_timeout=connect_timeout)
        self.force = force

    async def undo(self) -> UndoReport:
        """Revert every entry not yet undone, newest first, holding the run's lock (a
        second undo of the same run is refused, not interleaved). A journal that cannot
        be written stops it with :class:`JournalError`."""
        report = UndoReport()
        with self.run_dir.exclusive("undo"):
            journal = Journal(self.run_dir)
            run = RunContext(self.plugins, self.settings, self.run_dir, journal)
            context = UndoContext(run, force=self.force)
            try:
                await self._undo_entries(journal, context, report)
            finally:
                with contextlib.suppress(Exception):
                    await context.close()
                await run.close()
                journal.close()
        return report

    async def _undo_entries(self, journal: Journal, context: UndoContext, report: UndoReport) -> None:
        for entry in reversed(self.run_dir.entries()):
            if entry.undone:
                report.already_undone += 1
                continue
            label = entry_label(entry, self.plugins)
            operation = self.plugins.operations.get(entry.op)
            if operation is None:
                report.failed.append(f"{label}: cannot be undone without the plugin that wrote it")
                continue
            if operation.revert is None:
                kept = f" ({operation.kept(entry)})" if operation.kept else ""
                report.not_undoable.append(f"{label}{kept}")
                continue
            try:
                action = await operation.revert(entry, context)
            except (BeachheadError, OSError) as exc:
                journal.outcome(entry.seq, "undo_failed", error=str(exc))
                report.failed.append(f"{label}: {exc}")
                log.warning("undo.failed", seq=entry.seq, error=str(exc))
                continue
            journal.outcome(entry.seq, "undone", action=action)
            report.undone.append(f"{label}: {action}")
            log.info("undo.done", seq=entry.seq, action=action)
