"""A command's output, bounded in memory and kept whole on disk.

A channel hands every block of a command's stdout and stderr, as it arrives, to the
step's :class:`OutputSink`. Each stream is a :class:`StreamCapture`: it keeps the first
and the last :data:`KEPT_BYTES` in memory (what ``Outcome``, ``--json`` and
``results.jsonl`` show), counts every byte, and writes the whole stream, as it comes,
to ``output/TARGET/STEP.stdout`` (or ``.stderr``) in the run directory (files 0600,
directories 0700), created when the first byte arrives. Known secrets are masked
(``***``) before anything is kept or written, across block boundaries too, so a
head/tail cut or a block edge never leaves half a password behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from types import TracebackType

import structlog

from beachhead.agent.secrets import MASK, REDACTOR

log = structlog.get_logger("beachhead.output")

KEPT_BYTES = 64 * 1024  # of each stream, its head and its tail each: memory, --json, results.jsonl
OUTPUT_DIR = "output"
_MASK_BYTES = MASK.encode()
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class StreamCapture:
    """One output stream of one command: head and tail in memory, all of it on disk.

    ``spill`` is the file the whole stream goes to (None: memory only). ``total`` counts
    the bytes the command wrote; ``truncated`` says whether bytes between the head and
    the tail were left out of :meth:`text`."""

    def __init__(self, spill: Path | None = None, kept: int = KEPT_BYTES) -> None:
        self.spill = spill
        self.kept = kept
        self.total = 0
        self.head = bytearray()
        self.tail = bytearray()  # bytes after the head; the last ``kept`` of them count
        self.dropped = 0  # bytes after the head and before the kept tail
        self.spill_error: str | None = None
        self._fd: int | None = None
        self._carry = b""  # the end of the stream so far that may begin a secret
        self._secrets: tuple[str, ...] = ()
        self._encoded: list[bytes] = []
        self._finished = False

    # -- input ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Take the next block of the stream (masked, then kept and spilled). Up to the
        length of the longest known secret is held back until the next block or the end
        shows whether a secret begins there."""
        if self._finished:
            raise RuntimeError("output written after the stream finished")
        if not data:
            return
        self.total += len(data)
        self._emit(self._masked(data, final=False))

    def finish(self) -> None:
        """The stream has ended: write what was held back for masking, close the file."""
        if self._finished:
            return
        self._finished = True
        self._emit(self._masked(b"", final=True))
        self._close_spill()

    # -- output -----------------------------------------------------------------------------
    @property
    def truncated(self) -> bool:
        """True when :meth:`text` leaves bytes out."""
        return self.dropped + max(0, len(self.tail) - self.kept) > 0

    @property
    def file(self) -> Path | None:
        """The file holding the whole stream, if anything was written and kept whole."""
        if self.spill is None or self.spill_error is not None or self.total == 0:
            return None
        return self.spill

    def text(self) -> str:
        """The head and the tail, decoded (invalid UTF-8 replaced); when bytes between
        them were left out, a line saying how many separates them."""
        head = self.head.decode("utf-8", errors="replace")
        tail = bytes(self.tail[-self.kept :]) if self.tail else b""
        if not self.truncated:
            return head + tail.decode("utf-8", errors="replace")
        omitted = self.dropped + len(self.tail) - len(tail)
        start = 0
        while start < min(3, len(tail)) and tail[start] & 0xC0 == 0x80:
            start += 1  # do not begin with the remains of a character cut in two
        return f"{head}\n[... {omitted:,} bytes not shown ...]\n{tail[start:].decode('utf-8', errors='replace')}"

    def memory(self) -> int:
        """Bytes held in memory now (head, tail and what waits to be masked)."""
        return len(self.head) + len(self.tail) + len(self._carry)

    # -- internals ----------------------------------------------------------------------------
    def _masked(self, data: bytes, *, final: bool) -> bytes:
        secrets = REDACTOR.substrings()
        if secrets is not self._secrets:
            self._secrets = secrets
            self._encoded = [secret.encode() for secret in secrets]
        block = self._carry + data
        for secret in self._encoded:
            if secret in block:
                block = block.replace(secret, _MASK_BYTES)
        # A secret cut by the block's end can only begin in its last len-1 bytes: hold
        # those back until the next block (or the end) shows whether it completes.
        hold = 0 if final or not self._encoded else min(len(block), len(self._encoded[0]) - 1)
        self._carry = block[len(block) - hold :] if hold else b""
        return block[: len(block) - hold]

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._spill(data)
        room = self.kept - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.kept:  # trimmed in bulk: amortised, at most 2x kept held
                excess = len(self.tail) - self.kept
                self.dropped += excess
                del self.tail[:excess]

    def _spill(self, data: bytes) -> None:
        if self.spill is None or self.spill_error is not None or not data:
            return
        try:
            if self._fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
                self._fd = os.open(self.spill, flags, 0o600)
                os.fchmod(self._fd, 0o600)  # a file left by an earlier attempt keeps no wider mode
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.spill_error = f"cannot write {self.spill}: {exc.strerror or exc}"
            log.warning("output.spill_failed", path=str(self.spill), error=exc.strerror or str(exc))
            self._close_spill()
            with contextlib.suppress(OSError):
                self.spill.unlink()

    def _close_spill(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


class OutputSink:
    """Where a channel puts one command's stdout and stderr (see the module's description).

    ``directory`` and ``stem`` name the spill files (``STEM.stdout``, ``STEM.stderr``);
    without a directory the sink keeps head and tail in memory only."""

    def __init__(self, directory: Path | None = None, stem: str = "output", kept: int = KEPT_BYTES) -> None:
        self.directory = directory
        self.stdout = StreamCapture(directory / f"{stem}.stdout" if directory else None, kept)
        self.stderr = StreamCapture(directory / f"{stem}.stderr" if directory else None, kept)

    @classmethod
    def for_step(cls, run_dir: Path, target: str, step: int | None, attempt: int = 1) -> OutputSink:
        """The sink of step number ``step`` (None: a plan wait) on ``target``, spilling to
        ``RUN_DIR/output/TARGET/STEP.*`` (``STEP.attempt-N.*`` in a resumed run's later
        attempts, so no attempt's output replaces another's); when the directory cannot
        be made the output is kept in memory only (head and tail), with a warning."""
        directory = run_dir / OUTPUT_DIR / safe_name(target)
        try:
            for path in (run_dir / OUTPUT_DIR, directory):
                path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            log.warning("output.unwritable", path=str(directory), error=exc.strerror or str(exc))
            return cls(None)
        stem = str(step) if step is not None else "wait"
        return cls(directory, stem if attempt == 1 else f"{stem}.attempt-{attempt}")

    def finish(self) -> None:
        """Both streams have ended (idempotent)."""
        self.stdout.finish()
        self.stderr.finish()

    def __enter__(self) -> OutputSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.finish()


def safe_name(name: str) -> str:
    """``name`` as one path component: characters other than letters, digits, ``.``,
    ``_`` and ``-`` replaced, with a short hash of the original when anything was, so
    two targets never share a directory."""
    cleaned = _UNSAFE_NAME.sub("_", name).strip(".") or "_"
    if cleaned == name:
        return name
    return f"{cleaned[:64]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
