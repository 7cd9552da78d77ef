"""The write journal: every operation that leaves a trace, recorded before and after.

Each run has a directory ``RUNS_DIR/RUN_ID/`` holding ``run.json`` (what was run on
what), ``journal.jsonl`` (append-only, one JSON object per line), ``results.jsonl``
(each target's steps with the head and tail of their output), ``output/`` (every
command's whole output, see :mod:`beachhead.agent.output`) and ``backups/`` (the
content a write replaced, so ``beachhead undo`` can put it back). An entry's ``phase``
is ``intent`` before the operation, then ``done``, ``failed`` or ``interrupted``; undo
appends ``undone`` or ``undo_failed``. An intent with no outcome means the process died
mid-write: undo treats it as possibly done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from beachhead.agent.errors import InputError, JournalError, RunBusy, brief
from beachhead.agent.secrets import REDACTOR

log = structlog.get_logger("beachhead.journal")

RUNS_DIR_ENV = "BEACHHEAD_RUNS_DIR"
#: What a run id may look like: :func:`new_run_id` makes ``20250101T120000Z-0a1b2c``; any
#: name of letters, digits, ``.``, ``_`` and ``-`` (not starting with ``.``) up to 100
#: characters is looked up, nothing longer or stranger is turned into a path.
RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def state_dir() -> Path:
    """Beachhead's state: ``$XDG_STATE_HOME/beachhead``, else ``~/.local/state/beachhead``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "beachhead"


PathLike = str | os.PathLike[str]
"""A directory as callers give one: a string or a path object."""


def default_runs_dir(given: PathLike | None = None) -> Path:
    """``given`` (a caller's choice, ``~`` expanded), else ``$BEACHHEAD_RUNS_DIR``, else
    ``runs`` in :func:`state_dir`."""
    if given is not None:
        return Path(given).expanduser()
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV]).expanduser()
    return state_dir() / "runs"


def unwritable(directory: Path, exc: OSError) -> JournalError:
    """The one-line error for a run directory that cannot be written."""
    return JournalError(f"cannot write in {directory}: {exc.strerror or exc}")


def now_iso() -> str:
    """The current UTC time in ISO 8601, as every journal entry carries it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class JournalEntry:
    """One journaled operation: its intent and the latest outcome recorded for it."""

    seq: int
    intent: dict[str, Any]
    outcome: dict[str, Any] | None = None
    undo: dict[str, Any] | None = None

    @property
    def op(self) -> str:
        """The operation: ``put_file``, ``get_file`` or ``run``."""
        return str(self.intent["op"])

    @property
    def state(self) -> str:
        """``done``/``failed``/``interrupted``, or ``unknown`` when the process died."""
        return str(self.outcome["phase"]) if self.outcome else "unknown"

    @property
    def undone(self) -> bool:
        """True once undo has reverted this entry."""
        return self.undo is not None and self.undo["phase"] == "undone"


@dataclass
class RunDirectory:
    """The on-disk state of one run."""

    path: Path
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.run_id = self.path.name

    @classmethod
    def create(cls, runs_dir: Path, metadata: dict[str, Any]) -> RunDirectory:
        """Make a new run directory (private to the user) and write its ``run.json``;
        a runs directory that cannot be written is a :class:`JournalError`."""
        path = runs_dir / new_run_id()
        try:
            runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.mkdir(mode=0o700)
            (path / "backups").mkdir(mode=0o700)
            record = {"run_id": path.name, "started": now_iso(), **metadata}
            (path / "run.json").write_text(json.dumps(REDACTOR.redact(record), indent=2) + "\n")
        except OSError as exc:
            raise unwritable(runs_dir, exc) from None
        return cls(path)

    @classmethod
    def open(cls, runs_dir: Path, run_id: str) -> RunDirectory:
        """Find an existing run by id; an id that is not one (see :data:`RUN_ID`) is an
        :class:`InputError`, an unknown or unreadable one a :class:`JournalError`."""
        if not RUN_ID.fullmatch(run_id):
            example = "20250101T120000Z-0a1b2c"
            raise InputError(None, "RUN_ID", f"not a run id: {brief(run_id)} (run ids look like {example})")
        path = runs_dir / run_id
        try:
            found = (path / "journal.jsonl").is_file() or (path / "run.json").is_file()
        except OSError as exc:
            raise JournalError(f"cannot read run {run_id} in {runs_dir}: {exc.strerror or exc}") from None
        if not found:
            raise JournalError(f"no run {run_id} in {runs_dir}")
        return cls(path)

    @property
    def journal_path(self) -> Path:
        """The run's append-only journal file."""
        return self.path / "journal.jsonl"

    @property
    def results_path(self) -> Path:
        """One JSON line per finished target: its steps with their output."""
        return self.path / "results.jsonl"

    def record_result(self, record: dict[str, Any]) -> None:
        """Append a finished target's result (already redacted by its producer)."""
        try:
            with self.results_path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(REDACTOR.redact(record)) + "\n")
        except OSError as exc:
            raise unwritable(self.path, exc) from None

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold the run's lock while ``what`` (an undo) works on it; another process
        holding it already is a :class:`RunBusy` (no waiting, no second writer)."""
        descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"run {self.run_id} is busy: another process holds it ({what} refused)") from None
            yield
        finally:
            os.close(descriptor)

    def backup_path(self, seq: int) -> Path:
        """Where the content replaced by entry ``seq`` is kept."""
        return self.path / "backups" / str(seq)

    def save_json_backup(self, seq: int, document: Any) -> str:
        """Keep ``document`` (values a write replaces, which may be secrets) as entry
        ``seq``'s backup, readable by the user only; its path relative to the run, as
        the journal records it."""
        backup = self.backup_path(seq)
        backup.touch(mode=0o600)
        backup.write_text(json.dumps(document))
        return f"backups/{seq}"

    def load_json_backup(self, relative: str) -> Any:
        """A backup :meth:`save_json_backup` kept."""
        return json.loads((self.path / relative).read_text())

    def metadata(self) -> dict[str, Any]:
        """The run's ``run.json``."""
        try:
            return dict(json.loads((self.path / "run.json").read_text()))
        except (OSError, ValueError) as exc:
            raise JournalError(f"{self.path / 'run.json'}: {exc}") from None

    def records(self) -> Iterator[dict[str, Any]]:
        """Every journal line in order. A line torn by a crash mid-write is skipped with a
        warning: the entry it began is then seen as an intent with no outcome."""
        if not self.journal_path.exists():
            return
        with self.journal_path.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, 1):
                try:
                    yield json.loads(line)
                except ValueError:
                    log.warning("journal.torn_line", path=str(self.journal_path), line=number)

    def entries(self) -> list[JournalEntry]:
        """Journal records folded into one entry per operation, in sequence order."""
        entries: dict[int, JournalEntry] = {}
        for record in self.records():
            seq = int(record.get("seq", 0))
            phase = record.get("phase")
            if phase == "intent":
                entries[seq] = JournalEntry(seq, record)
            elif seq in entries and phase in ("undone", "undo_failed"):
                entries[seq].undo = record
            elif seq in entries:
                entries[seq].outcome = record
        return [entries[seq] for seq in sorted(entries)]


class Journal:
    """Appends redacted entries to a run's journal, flushed line by line.

    Once a line cannot be written (a full or read-only file system), the journal is
    ``broken``: that write and every later one raise the same :class:`JournalError`, so
    nothing else is done without a record of it."""

    def __init__(self, run_dir: RunDirectory) -> None:
        self.run_dir = run_dir
        self.broken: JournalError | None = None
        try:
            self._stream: TextIO = run_dir.journal_path.open("a", encoding="utf-8")
            if self._stream.tell() and not run_dir.journal_path.read_bytes().endswith(b"\n"):
                self._stream.write("\n")  # end a line torn by a crash so the next entry stands alone
        except OSError as exc:
            raise unwritable(run_dir.path, exc) from None
        self._next_seq = 1 + max((entry.seq for entry in run_dir.entries()), default=0)

    def _write(self, record: dict[str, Any]) -> None:
        if self.broken is not None:
            raise self.broken
        record = REDACTOR.redact({**record, "time": now_iso()})
        try:
            self._stream.write(json.dumps(record, sort_keys=False) + "\n")
            self._stream.flush()
        except OSError as exc:
            self.broken = unwritable(self.run_dir.path, exc)
            log.error("journal.unwritable", path=str(self.run_dir.path), error=exc.strerror or str(exc))
            raise self.broken from None

    def reserve(self) -> int:
        """Allocate the sequence number of the next operation (its backup is named by it)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def intent(self, seq: int, target: str, target_uri: str, op: str, **details: Any) -> None:
        """Record that operation ``seq`` is about to happen, with how to undo it."""
        self._write({"seq": seq, "phase": "intent", "op": op, "target": target, "target_uri": target_uri, **details})

    def outcome(self, seq: int, phase: str, **details: Any) -> None:
        """Record how operation ``seq`` ended (``done``/``failed``/``interrupted``) or
        how undoing it went (``undone``/``undo_failed``)."""
        self._write({"seq": seq, "phase": phase, **details})

    def close(self) -> None:
        """Flush and close the journal file (what a full disk kept from it is lost)."""
        if self._stream.closed:
            return
        try:
            self._stream.flush()
            os.fsync(self._stream.fileno())
        except OSError as exc:
            self.broken = self.broken or unwritable(self.run_dir.path, exc)
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()
