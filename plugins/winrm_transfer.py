"""File transfers of the ``winrm`` channel, over the WinRS shell's stdin and stdout and
built only on cmd.exe and programs every Windows has (no PowerShell needed):

- upload: ``findstr "^" > PARTIAL.b64`` copies base64 lines arriving over WinRS Send
  (in pieces sized to the endpoint's ``MaxEnvelopeSizekb``) into a staging file;
  ``certutil -f -decode PARTIAL.b64 PARTIAL`` turns it into the partial file the journal
  names (certutil reads base64 with or without certificate header lines), the staging
  file is deleted, ``certutil -hashfile PARTIAL SHA256`` must give the local file's
  sha256, and ``move /y PARTIAL REMOTE`` puts it in place. Four commands, whatever the
  size (Packer's winrmcp runs one per few kilobytes).
- download: ``certutil -hashfile`` first (which also says whether the file exists),
  ``certutil -f -encode REMOTE %TEMP%\\beachhead-TAG.b64``, ``type`` of that file
  streamed back through Receive (each answer up to the envelope size) and decoded
  into a local partial file as it arrives, the temporary file deleted, the local
  sha256 compared with the guest's before the copy is moved into place.

See https://learn.microsoft.com/windows-server/administration/windows-commands/certutil
and …/findstr. certutil cannot hash an empty file on some Windows versions
(0x800703ee); an empty file needs no certutil in either direction.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from beachhead.agent.channel import FileInfo, partial_path
from beachhead.agent.checksums import file_sha256, sha256_of
from beachhead.agent.errors import BeachheadError, StepFailed, VerificationFailed
from beachhead.plugins.winrm_session import CMD, guest_path

if TYPE_CHECKING:
    from beachhead.plugins.winrm_session import WinrmSession

LINE_RAW = 48  # bytes per base64 line of 64 characters, as certutil writes them
LINE_TEXT = 66  # a line's characters on stdin, with its CRLF
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX = re.compile(r"[0-9a-fA-F]{64}")
EMPTY_FILE_QUIRK = "0x800703ee"


def _failed(action: str, what: str, status: int, out: str, err: str) -> StepFailed:
    detail = " ".join((err.strip() or out.strip()).split())[:500]
    return StepFailed(
        action, f"{what} failed (exit status {status}): {detail}", exit_status=status, stdout=out, stderr=err
    )


async def guest_sha256(session: WinrmSession, path: str, action: str) -> str:
    """The sha256 the guest computes of ``path`` (``certutil -hashfile PATH SHA256``;
    older Windows print the hex with spaces between the bytes)."""
    status, out, err = await session.cmd(f'certutil -hashfile "{path}" SHA256')
    if status != 0:
        if EMPTY_FILE_QUIRK in (out + err).lower():
            return EMPTY_SHA256
        raise _failed(action, f"certutil -hashfile {path}", status, out, err)
    for line in out.splitlines():
        compact = line.replace(" ", "").strip()
        if _HEX.fullmatch(compact):
            return compact.lower()
    raise StepFailed(action, f"certutil -hashfile {path} printed no sha256: {out.strip()[:200]}")


async def _base64_lines(local: Path, session: WinrmSession) -> AsyncIterator[bytes]:
    """``local`` as base64 lines with CRLF, in blocks of about one Send's size."""
    with local.open("rb") as stream:
        while True:
            raw_size = max(LINE_RAW, session.send_limit // LINE_TEXT * LINE_RAW)
            block = await asyncio.to_thread(stream.read, raw_size)
            if not block:
                return
            text = base64.b64encode(block)
            yield b"".join(text[i : i + 64] + b"\r\n" for i in range(0, len(text), 64))


async def put_file(session: WinrmSession, local: Path, remote: str, partial: str | None) -> FileInfo:
    """Upload ``local`` to ``remote`` through ``partial`` (see the module's description),
    verified by the guest's sha256 before it replaces anything. A refused step removes
    the partial and staging files; a lost connection may leave them (the journal names
    the partial; removing it removes its staging file too)."""
    action = f"upload to {remote}"
    target = guest_path(remote)
    part = guest_path(partial or partial_path(remote, secrets.token_hex(4)))
    staging = f"{part}.b64"
    expected, size = await file_sha256(local)
    try:
        try:
            if size:
                status, out, err = await session.cmd(f'findstr "^" > "{staging}"', stdin=_base64_lines(local, session))
                if status != 0:
                    raise _failed(action, f"writing {staging}", status, out, err)
                status, out, err = await session.cmd(f'certutil -f -decode "{staging}" "{part}"')
                if status != 0:
                    raise _failed(action, f"certutil -decode into {part}", status, out, err)
            else:  # findstr with no input writes an empty file
                status, out, err = await session.cmd(f'findstr "^" > "{part}"')
                if status not in (0, 1):  # 1: no line matched, as for empty input
                    raise _failed(action, f"writing {part}", status, out, err)
        finally:
            if size:
                with contextlib.suppress(BeachheadError):
                    await asyncio.shield(session.cmd(f'del /f /q "{staging}"'))
        actual = await guest_sha256(session, part, action)
        if actual != expected:
            raise VerificationFailed(action, f"the guest's copy has sha256 {actual}, expected {expected}")
        status, out, err = await session.cmd(f'move /y "{part}" "{target}"')
        if status != 0:
            raise _failed(action, f"move to {target}", status, out, err)
    except StepFailed:
        with contextlib.suppress(BeachheadError):
            await asyncio.shield(session.cmd(f'del /f /q "{part}"'))
        raise
    return FileInfo(remote, size, actual)


class _Base64Sink:
    """certutil's encoded text as it streams in: header and trailer lines skipped, every
    complete line decoded and appended to a local file."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.pending = b""
        self.size = 0

    async def feed(self, name: str, data: bytes) -> None:
        if name != "stdout":
            return
        self.pending += data
        complete, _, self.pending = self.pending.rpartition(b"\n")
        await self._write(complete)

    async def finish(self) -> None:
        await self._write(self.pending)
        self.pending = b""

    async def _write(self, text: bytes) -> None:
        body = b"".join(line.strip() for line in text.split(b"\n") if not line.strip().startswith(b"-----"))
        if body:
            block = base64.b64decode(body)
            self.size += len(block)
            await asyncio.to_thread(self.stream.write, block)  # type: ignore[attr-defined]


async def get_file(session: WinrmSession, remote: str, local: Path) -> FileInfo:
    """Download ``remote`` into ``local`` through a local partial file, moved into place
    once its sha256 matches the guest's."""
    action = f"download of {remote}"
    path = guest_path(remote)
    expected = await guest_sha256(session, path, action)
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f".{local.name}.beachhead-{secrets.token_hex(4)}.part")
    encoded = rf"%TEMP%\beachhead-{secrets.token_hex(6)}.b64"
    try:
        with partial.open("wb") as stream:
            if expected != EMPTY_SHA256:
                sink = _Base64Sink(stream)
                try:
                    status, out, err = await session.cmd(f'certutil -f -encode "{path}" "{encoded}"')
                    if status != 0:
                        raise _failed(action, f"certutil -encode {path}", status, out, err)
                    status = await session.execute(f'{CMD} "type "{encoded}""', sink.feed)
                    if status != 0:
                        raise StepFailed(action, f"type {encoded} failed (exit status {status})")
                    await sink.finish()
                finally:
                    with contextlib.suppress(BeachheadError):
                        await asyncio.shield(session.cmd(f'del /f /q "{encoded}"'))
        actual, size = await asyncio.to_thread(lambda: (sha256_of(partial), partial.stat().st_size))
        if actual != expected:
            raise VerificationFailed(action, f"received {size} bytes with sha256 {actual}, the guest has {expected}")
        partial.replace(local)
    finally:
        partial.unlink(missing_ok=True)
    return FileInfo(str(local), size, actual)
