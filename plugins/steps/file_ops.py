"""The journal operations of file transfers, shared by ``upload`` and ``download``:
``make_dirs`` (directories created in the guest or locally), ``put_file`` (a guest
file written) and ``get_file`` (a local file written), with how undo reverts each."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from beachhead.agent.checksums import sha256_of
from beachhead.agent.journal import JournalEntry
from beachhead.agent.stepkinds import Operation
from beachhead.agent.undo import UndoContext


def _is_local(entry: JournalEntry) -> bool:
    return entry.intent.get("where") == "local"


def _written_sha256(entry: JournalEntry) -> str | None:
    """The sha256 a write recorded when it completed (None when it did not)."""
    return entry.outcome.get("sha256") if entry.outcome and entry.state == "done" else None


def _replaced(entry: JournalEntry) -> str:
    return "replaced existing" if entry.intent.get("replaces", {}).get("exists") else "new"


async def _remote_sha256(session: Any, path: str) -> str | None:
    stat = await session.stat(path)
    if not stat.exists:
        return None
    with tempfile.TemporaryDirectory(prefix="beachhead-undo-") as scratch:
        info = await session.get_file(path, Path(scratch) / "current")
    return str(info.sha256)


async def _recheck_put_file(entry: JournalEntry, undo: UndoContext) -> bool | None:
    intended: str | None = entry.intent.get("intended_sha256")
    if intended is None:
        return None
    session = await undo.session(entry.intent)
    return await _remote_sha256(session, entry.intent["path"]) == intended


async def _revert_put_file(entry: JournalEntry, undo: UndoContext) -> str:
    intent = entry.intent
    replaces = intent.get("replaces", {})
    session = await undo.session(intent)
    partial = intent.get("partial")
    if partial and (await session.stat(partial)).exists:  # a transfer cut short left it
        await session.remove(partial)
    path = intent["path"]
    current = await _remote_sha256(session, path)
    undo.check_unchanged(path, current, _written_sha256(entry), replaces.get("sha256"))
    if replaces.get("backup"):
        if current == replaces.get("sha256"):
            return "already as before the run"
        await session.put_file(undo.run_dir.path / replaces["backup"], path, replaces.get("mode"))
        return "restored"
    if current is None:
        return "already absent"
    await session.remove(path)
    return "deleted"


def _revert_local_file(entry: JournalEntry, undo: UndoContext) -> str:
    replaces = entry.intent.get("replaces", {})
    path = Path(entry.intent["path"])
    current = sha256_of(path) if path.is_file() else None
    undo.check_unchanged(str(path), current, _written_sha256(entry), replaces.get("sha256"))
    if replaces.get("backup"):
        shutil.copy2(undo.run_dir.path / replaces["backup"], path)
        return "restored"
    if current is None:
        return "already absent"
    path.unlink()
    return "deleted"


async def _revert_get_file(entry: JournalEntry, undo: UndoContext) -> str:
    return await asyncio.to_thread(_revert_local_file, entry, undo)


def _remove_local_dir(path: Path) -> bool:
    """Remove an empty local directory; False when it holds something (kept)."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


async def _revert_make_dirs(entry: JournalEntry, undo: UndoContext) -> str:
    created = entry.outcome.get("created", []) if entry.outcome else []
    if not created:
        return "no directory was created"
    if _is_local(entry):
        kept = [path for path in reversed(created) if not _remove_local_dir(Path(path))]
    else:
        session = await undo.session(entry.intent)
        kept = [path for path in reversed(created) if not await session.remove_dir(path)]
    if kept:
        return f"removed {len(created) - len(kept)} directories; kept non-empty {', '.join(kept)}"
    return f"removed {', '.join(reversed(created))}"


MAKE_DIRS = Operation(
    "make_dirs",
    describe=lambda entry: f"{'local ' if _is_local(entry) else ''}directory {entry.intent.get('path')} (created)",
    revert=_revert_make_dirs,
)
PUT_FILE = Operation(
    "put_file",
    describe=lambda entry: f"file {entry.intent.get('path')} ({_replaced(entry)})",
    revert=_revert_put_file,
    recheck=_recheck_put_file,
)
GET_FILE = Operation(
    "get_file",
    describe=lambda entry: f"local file {entry.intent.get('path')} ({_replaced(entry)})",
    revert=_revert_get_file,
)
