"""``beachhead undo``: revert what a run wrote, newest first.

Files a run replaced are restored from the run's backups; files it created are deleted;
extraConfig keys get back the values they had (or are removed again); commands and
power operations cannot be undone and are listed. A file or key that changed again
after the run (its content is neither what the run wrote nor what it replaced) is left
alone unless ``force`` is given. Each reverted entry is journaled as ``undone``, so
undo can be run again after a partial failure and only does what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from beachhead.agent.channel import ChannelSession
from beachhead.agent.checksums import sha256_of, value_digest, value_digest_of_base64
from beachhead.agent.errors import BeachheadError
from beachhead.agent.journal import Journal, JournalEntry, RunDirectory
from beachhead.agent.registry import ChannelRegistry
from beachhead.agent.targets import Target, parse_target
from beachhead.agent.vsphere.connection import current_pool, vcenter_pool
from beachhead.agent.vsphere.vmconfig import read_extra_config, write_extra_config
from beachhead.metadata_server.client import MetadataClient, read_token_file

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


class _Conflict(BeachheadError):
    """The file changed after the run; undo would destroy someone else's change."""


class Undoer:
    """Reverts one run's journal entries, opening channel sessions as needed."""

    def __init__(
        self, run_dir: RunDirectory, registry: ChannelRegistry, *, connect_timeout: float, force: bool
    ) -> None:
        self.run_dir = run_dir
        self.registry = registry
        self.connect_timeout = connect_timeout
        self.force = force
        self.sessions: dict[tuple[str, str], ChannelSession] = {}
        self.targets: dict[str, Target] = {}

    async def undo(self) -> UndoReport:
        """Revert every entry not yet undone, newest first."""
        report = UndoReport()
        journal = Journal(self.run_dir)
        try:
            async with vcenter_pool():
                try:
                    await self._undo_entries(journal, report)
                finally:
                    for session in self.sessions.values():
                        with contextlib.suppress(Exception):
                            await session.close()
        finally:
            journal.close()
        return report

    async def _undo_entries(self, journal: Journal, report: UndoReport) -> None:
        for entry in reversed(self.run_dir.entries()):
            if entry.undone:
                report.already_undone += 1
                continue
            label = _label(entry)
            if entry.op == "run":
                state = entry.outcome.get("exit_status") if entry.outcome else entry.state
                report.not_undoable.append(f"{label} (exit status {state})")
                continue
            if entry.op == "power":
                before = entry.outcome.get("before") if entry.outcome else entry.state
                report.not_undoable.append(f"{label} (was {before}; power state left as it is)")
                continue
            try:
                action = await self._revert(entry)
            except (BeachheadError, OSError) as exc:
                journal.outcome(entry.seq, "undo_failed", error=str(exc))
                report.failed.append(f"{label}: {exc}")
                log.warning("undo.failed", seq=entry.seq, error=str(exc))
                continue
            journal.outcome(entry.seq, "undone", action=action)
            report.undone.append(f"{label}: {action}")
            log.info("undo.done", seq=entry.seq, action=action)

    async def _revert(self, entry: JournalEntry) -> str:
        intent = entry.intent
        if entry.op == "make_dirs":
            return await self._remove_dirs(entry)
        if entry.op == "extra_config":
            return await self._restore_extra_config(entry)
        if entry.op == "publish_userdata":
            return await self._unpublish(entry)
        replaces = intent.get("replaces", {})
        written = entry.outcome.get("sha256") if entry.outcome and entry.state == "done" else None
        original = replaces.get("sha256")
        backup = self.run_dir.path / replaces["backup"] if replaces.get("backup") else None
        if intent.get("where") == "local":
            return await asyncio.to_thread(self._revert_local, Path(intent["path"]), backup, written, original)
        session = await self._session(intent)
        path = intent["path"]
        current = await self._remote_sha256(session, path)
        if current is not None and current not in (written, original) and written is not None and not self.force:
            raise _Conflict(f"{path} changed after the run (sha256 {current}); left alone (use --force)")
        if backup is not None:
            if current == original:
                return "already as before the run"
            await session.put_file(backup, path, replaces.get("mode"))
            return "restored"
        if current is None:
            return "already absent"
        await session.remove(path)
        return "deleted"

    async def _restore_extra_config(self, entry: JournalEntry) -> str:
        intent = entry.intent
        original: dict[str, str | None] = self.run_dir.load_json_backup(intent["replaces"]["backup"])
        written = entry.outcome.get("sha256", {}) if entry.outcome and entry.state == "done" else {}
        vcenter, vm = await current_pool().vm_of(self._target(intent), self.connect_timeout)
        current = await read_extra_config(vcenter, vm, original)
        changed = [
            key
            for key, value in current.items()
            if key in written and value_digest(value) not in (written[key], value_digest(original[key]))
        ]
        if changed and not self.force:
            raise _Conflict(f"extraConfig {', '.join(changed)} changed after the run; left alone (use --force)")
        restore = {key: value for key, value in original.items() if current[key] != value}
        if not restore:
            return "already as before the run"
        await write_extra_config(vcenter, vm, restore, f"restore extraConfig {', '.join(restore)}")
        return f"restored {', '.join(restore)}"

    async def _unpublish(self, entry: JournalEntry) -> str:
        intent = entry.intent
        token_file = os.environ.get("BEACHHEAD_METADATA_TOKEN_FILE") or intent["token_file"]
        client = MetadataClient(intent["server"], read_token_file(Path(token_file)))
        instance_id = intent["instance_id"]
        written = entry.outcome.get("sha256") if entry.outcome and entry.state == "done" else None
        backup = intent["replaces"].get("backup")
        previous = self.run_dir.load_json_backup(backup) if backup else None
        current = await client.data(instance_id)
        current_sha = value_digest_of_base64(current["user_data"]) if current else None
        original = value_digest_of_base64(previous["user_data"]) if previous else None
        if current_sha not in (None, written, original) and written is not None and not self.force:
            raise _Conflict(f"instance {instance_id} was published again after the run; left alone (use --force)")
        if previous is not None:
            if current_sha == original:
                return "already as before the run"
            await client.republish(instance_id, previous)
            return f"republished what instance {instance_id} had before"
        if current is None:
            return "already revoked"
        await client.revoke(instance_id)
        return f"revoked instance {instance_id}"

    async def _remove_dirs(self, entry: JournalEntry) -> str:
        created = entry.outcome.get("created", []) if entry.outcome else []
        if not created:
            return "no directory was created"
        if entry.intent.get("where") == "local":
            kept = [path for path in reversed(created) if not _remove_local_dir(Path(path))]
        else:
            session = await self._session(entry.intent)
            kept = [path for path in reversed(created) if not await session.remove_dir(path)]
        if kept:
            return f"removed {len(created) - len(kept)} directories; kept non-empty {', '.join(kept)}"
        return f"removed {', '.join(reversed(created))}"

    def _revert_local(self, path: Path, backup: Path | None, written: str | None, original: str | None) -> str:
        current = sha256_of(path) if path.is_file() else None
        if current is not None and current not in (written, original) and written is not None and not self.force:
            raise _Conflict(f"{path} changed after the run (sha256 {current}); left alone (use --force)")
        if backup is not None:
            shutil.copy2(backup, path)
            return "restored"
        if current is None:
            return "already absent"
        path.unlink()
        return "deleted"

    async def _remote_sha256(self, session: ChannelSession, path: str) -> str | None:
        stat = await session.stat(path)
        if not stat.exists:
            return None
        with tempfile.TemporaryDirectory(prefix="beachhead-undo-") as scratch:
            info = await session.get_file(path, Path(scratch) / "current")
        return info.sha256

    async def _session(self, intent: dict[str, Any]) -> ChannelSession:
        uri, channel = intent["target_uri"], intent["channel"]
        key = (uri, channel)
        if key not in self.sessions:
            self.sessions[key] = await self.registry.connect(channel, self._target(intent), self.connect_timeout)
        return self.sessions[key]

    def _target(self, intent: dict[str, Any]) -> Target:
        uri = intent["target_uri"]
        if uri not in self.targets:
            self.targets[uri] = parse_target(uri, source="journal", where=f"target {intent['target']}")
        return self.targets[uri]


def _remove_local_dir(path: Path) -> bool:
    """Remove an empty local directory; False when it holds something (kept)."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _label(entry: JournalEntry) -> str:
    intent = entry.intent
    target = intent.get("target", "?")
    if entry.op == "run":
        what = intent.get("command") or intent.get("script")
        return f"#{entry.seq} {target}: command {what!r}"
    if entry.op == "extra_config":
        return f"#{entry.seq} {target}: extraConfig {', '.join(intent.get('keys', []))}"
    if entry.op == "power":
        return f"#{entry.seq} {target}: power {intent.get('state')}"
    if entry.op == "publish_userdata":
        return f"#{entry.seq} {target}: user-data of instance {intent.get('instance_id')} on {intent.get('server')}"
    where = "local file" if intent.get("where") == "local" else "file"
    return f"#{entry.seq} {target}: {where} {intent.get('path')}"
