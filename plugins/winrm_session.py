"""The ``winrm`` channel's sessions: commands and files over WinRS, with pywinrm in the
worker threads of :mod:`beachhead.plugins.winrm_protocol` (kept apart from
:mod:`beachhead.plugins.winrm` so that loading the plugin does not load pywinrm).

One WinRS shell per target serves every command (``MaxConcurrentOperationsPerUser`` and
``MaxShellsPerUser`` stay untouched by long plans); it is opened again when the endpoint
lost it (invalid selectors). A command whose step sets environment values gets a shell
of its own, created with those values (``rsp:Environment``) and deleted after it: the
values never appear on a command line, and the wire log masks them.

How a run step's command reaches the guest (nothing of it stays there):

- ``powershell``: ``powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass
  -EncodedCommand BOOTSTRAP`` (through ``cmd.exe /d /s /c``), a fixed bootstrap that reads the script (base64 of UTF-8,
  so no console code page can alter it) from stdin, where WinRS Send delivers it, and
  runs it as a script block. The command line stays short whatever the script's size.
- ``cmd``: cmd.exe cannot run a script from stdin faithfully (it would read it as typed
  lines: no labels, no ``goto``, ``%%`` and echoing as at a prompt), so a script, or a
  command of several lines, is written over stdin (``findstr "^"``, which copies its
  input line by line) to ``%TEMP%\\beachhead-TAG.cmd``, run by ``cmd.exe /d /s /c``, and
  deleted whether or not it succeeded; a one-line command runs as ``cmd.exe /d /s /c
  "COMMAND"``.

Output is streamed into the step's sink as each Receive brings it; PowerShell's CLIXML
error stream becomes plain text. A step timeout or Ctrl-C sends WinRS Signal
``terminate`` (on a connection of its own, so it does not wait behind the pending
Receive), which ends the command's process and the processes it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import PureWindowsPath
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from winrm.exceptions import WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError

from beachhead.agent.channel import (
    LOST_WHILE_RUNNING,
    ChannelSession,
    CommandRequest,
    FileInfo,
    Outcome,
    RemoteStat,
    ShellScript,
)
from beachhead.agent.errors import BeachheadError, ChannelError, ChannelUnavailable, StepFailed
from beachhead.agent.output import OutputSink, StreamCapture
from beachhead.agent.targets import WinrmRoute
from beachhead.agent.windows_scripts import POWERSHELL, batch_file, inline_cmd, powershell_stdin
from beachhead.plugins import winrm_protocol as wsman
from beachhead.plugins.winrm_protocol import NAME, LoggedProtocol

if TYPE_CHECKING:
    from pathlib import Path

    from beachhead.agent.context import TargetContext
    from beachhead.agent.vsphere.wirelog import WireLog

T = TypeVar("T")
log = structlog.get_logger("beachhead.winrm")

CODEPAGE_UTF8 = 65001
CMD = "cmd.exe /d /s /c"
SEND_OVERHEAD = 4096  # a Send envelope's header and framing, besides its base64 payload
MIN_SEND = 4096  # the smallest stdin piece a too-large refusal shrinks to
END_COMMAND_S = 15.0

# Started through cmd.exe, as a WinRS client's default (WINRS_SKIP_CMD_SHELL false) would:
# a guest without PowerShell then answers as cmd.exe does (exit status 9009), not with a
# fault that would look like a broken channel.
POWERSHELL_COMMAND = f'{CMD} "{POWERSHELL}"'

OnOutput = Callable[[str, bytes], Awaitable[None]]
Stdin = bytes | AsyncIterator[bytes] | None


def _never(exc: BaseException) -> bool:
    return False


class WinrmSession:
    """A WinRS connection to one Windows guest (implements :class:`ChannelSession`)."""

    channel = NAME

    def __init__(
        self, target_name: str, host: str, route: WinrmRoute, wire_log: WireLog | None, protocol: LoggedProtocol
    ) -> None:
        self.target_name = target_name
        self.host = host
        self.route = route
        self.wire_log = wire_log
        self.protocol = protocol
        self.max_envelope = wsman.DEFAULT_MAX_ENVELOPE
        self.send_limit = (self.max_envelope - SEND_OVERHEAD) * 3 // 4
        self._shell_id: str | None = None
        self._lock = asyncio.Lock()
        self._in_flight: asyncio.Future[Any] | None = None
        self._control: LoggedProtocol | None = None
        self._control_lock = asyncio.Lock()

    def set_max_envelope(self, size: int) -> None:
        """Size stdin pieces for an endpoint that takes envelopes of ``size`` bytes:
        what remains after the envelope's own header, less base64's growth by a third."""
        self.max_envelope = size
        self.send_limit = max(MIN_SEND, (size - SEND_OVERHEAD) * 3 // 4)

    # -- calls into pywinrm ------------------------------------------------------------
    async def call(
        self,
        fn: Callable[[LoggedProtocol], T],
        *,
        expect: Callable[[BaseException], bool] = _never,
        connecting: bool = False,
    ) -> T:
        """``fn(protocol)`` in a worker thread, one at a time on this session's connection
        (NTLM's sealing counts messages: they must not interleave). Errors become the
        channel's (:func:`~beachhead.plugins.winrm_protocol.as_error`) except those
        ``expect`` accepts, which the caller handles. A call cut short by cancellation
        goes on in its thread; the next call waits for it first."""
        async with self._lock:
            if self._in_flight is not None:
                with contextlib.suppress(BaseException):
                    await self._in_flight
                self._in_flight = None
            future = asyncio.get_running_loop().run_in_executor(wsman.pool(), fn, self.protocol)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                self._in_flight = future
                raise
            except Exception as exc:
                if expect(exc):
                    raise
                raise wsman.as_error(exc, self.target_name, self.protocol, self.route, connecting=connecting) from None

    async def _terminate(self, shell_id: str, command_id: str) -> None:
        """Signal ``terminate`` on a connection of its own (the session's may be busy
        with a Receive until its operation timeout)."""
        async with self._control_lock:
            if self._control is None:
                self._control = wsman.make_protocol(self.host, self.route, self.wire_log)
            control = self._control
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    loop.run_in_executor(wsman.pool(), wsman.signal, control, shell_id, command_id), END_COMMAND_S
                )

    async def shell(self) -> str:
        """The target's shared shell, opened on first use."""
        if self._shell_id is None:
            await self.open_shared_shell()
        assert self._shell_id is not None
        return self._shell_id

    async def open_shared_shell(self, *, connecting: bool = False) -> None:
        """Open the shell the session's commands share (``connecting``: its failures are
        :class:`ChannelUnavailable`, as while the session is being opened)."""

        def open_shell(protocol: LoggedProtocol) -> str:
            return str(protocol.open_shell(codepage=CODEPAGE_UTF8, noprofile=True))

        self._shell_id = await self.call(open_shell, connecting=connecting)

    @contextlib.asynccontextmanager
    async def shell_for(self, env: Mapping[str, str] | None) -> AsyncIterator[str | None]:
        """A shell for commands with ``env`` in their environment: one of their own,
        deleted afterwards; None (the shared shell) when there are no values."""
        if not env:
            yield None
            return
        values = dict(env)
        shell_id = await self.call(lambda p: p.open_shell(env_vars=values, codepage=CODEPAGE_UTF8, noprofile=True))
        try:
            yield shell_id
        finally:
            with contextlib.suppress(BeachheadError):
                await asyncio.shield(self.call(lambda p: p.close_shell(shell_id, close_session=False)))

    # -- one command -------------------------------------------------------------------
    async def execute(
        self,
        command_line: str,
        on_output: OnOutput,
        *,
        stdin: Stdin = None,
        shell_id: str | None = None,
        running: str | None = None,
    ) -> int:
        """Run ``command_line`` (started directly, not through cmd.exe) in ``shell_id``
        (None: the shared shell), feed it ``stdin`` and hand each block of its output to
        ``on_output``; return its exit code. A failure after the command started is a
        :class:`ChannelError` saying ``running`` when given."""
        shared = shell_id is None
        shell = shell_id or await self.shell()

        # The program in rsp:Command, the rest in rsp:Arguments, as WinRS clients send them.
        program, _, arguments = command_line.partition(" ")

        def start(protocol: LoggedProtocol, shell: str) -> str:
            return str(
                protocol.run_command(
                    shell, program, [arguments] if arguments else [], console_mode_stdin=False, skip_cmd_shell=True
                )
            )

        try:
            command_id = await self.call(
                lambda p: start(p, shell), expect=lambda e: shared and wsman.fault_code(e) == wsman.INVALID_SELECTORS
            )
        except WSManFaultError:
            log.info("winrm.shell_lost", target=self.target_name, shell=shell)
            self._shell_id = None
            shell = await self.shell()
            command_id = await self.call(lambda p: start(p, shell))
        try:
            await self._feed(shell, command_id, stdin)
            exit_code = await self._collect(shell, command_id, on_output)
        except asyncio.CancelledError:
            await asyncio.shield(self._terminate(shell, command_id))
            raise
        except ChannelError as exc:
            if running is None:
                raise
            raise ChannelError(NAME, self.target_name, f"{running} ({exc.reason})", retryable=True) from None
        with contextlib.suppress(BeachheadError):  # release the command, as WinRS clients do
            await self.call(lambda p: wsman.signal(p, shell, command_id))
        return exit_code

    async def _feed(self, shell: str, command_id: str, stdin: Stdin) -> None:
        """Send ``stdin`` in pieces the endpoint accepts (halved while it refuses one as
        too large), then end of file."""

        def too_large(exc: BaseException) -> bool:
            return wsman.too_large(exc) and self.send_limit > MIN_SEND

        blocks: AsyncIterator[bytes] = _once(stdin) if isinstance(stdin, bytes) else stdin or _once(b"")
        async for block in blocks:
            offset = 0
            while offset < len(block):
                piece = block[offset : offset + self.send_limit]
                try:
                    await self.call(
                        partial(_send_piece, shell=shell, command_id=command_id, data=piece), expect=too_large
                    )
                except (WSManFaultError, WinRMTransportError):  # refused as too large
                    self.send_limit = max(MIN_SEND, self.send_limit // 2)
                    log.info("winrm.send_shrunk", target=self.target_name, limit=self.send_limit)
                    continue
                offset += len(piece)
        await self.call(lambda p: wsman.send(p, shell, command_id, b"", True))

    async def _collect(self, shell: str, command_id: str, on_output: OnOutput) -> int:
        """Receive until the command is done (re-issuing a Receive that timed out in the
        endpoint), handing on each block of output as it comes."""

        def timed_out(exc: BaseException) -> bool:
            return isinstance(exc, WinRMOperationTimeoutError)

        while True:
            try:
                got = await self.call(
                    lambda p: wsman.receive(p, shell, command_id, self.max_envelope), expect=timed_out
                )
            except WinRMOperationTimeoutError:
                continue
            for name, data in got.blocks:
                await on_output(name, data)
            if got.done:
                if got.exit_code is None:
                    raise ChannelError(NAME, self.target_name, "the command ended without an exit code")
                return got.exit_code

    async def cmd(self, line: str, *, stdin: Stdin = None, shell_id: str | None = None) -> tuple[int, str, str]:
        """``cmd.exe /d /s /c "LINE"``, its output collected (for short bookkeeping commands)."""
        out, err = bytearray(), bytearray()

        async def keep(name: str, data: bytes) -> None:
            (err if name == "stderr" else out).extend(data)

        status = await self.execute(f'{CMD} "{line}"', keep, stdin=stdin, shell_id=shell_id)
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    # -- run ------------------------------------------------------------------------------
    async def run(self, request: CommandRequest, output: OutputSink | None = None) -> Outcome:
        """Run a command or script (see the module's description), its output streamed
        into ``output``. A connection lost after the command started is a
        :class:`ChannelError` ("connection lost while running")."""
        output = output if output is not None else OutputSink()
        started = datetime.now(UTC)
        script = request.script
        powershell = script is not None and script.shell == "powershell"
        stderr = ClixmlDecoder(output.stderr) if powershell else None

        async def stream(name: str, data: bytes) -> None:
            if name == "stderr":
                (stderr or output.stderr).write(data)
            else:
                output.stdout.write(data)

        try:
            if script is None:  # rendered for another channel: its command line as it is
                status = await self.execute(request.command, stream, stdin=request.stdin, running=LOST_WHILE_RUNNING)
            else:
                status = await self._run_script(script, stream)
        finally:
            if stderr is not None:
                stderr.finish()
            output.finish()
        return Outcome(
            command=request.description,
            exit_status=status,
            stdout=output.stdout.text(),
            stderr=output.stderr.text(),
            started=started,
            ended=datetime.now(UTC),
        )

    async def _run_script(self, script: ShellScript, stream: OnOutput) -> int:
        async with self.shell_for(script.env) as shell_id:
            if script.shell == "powershell":
                return await self.execute(
                    POWERSHELL_COMMAND,
                    stream,
                    stdin=powershell_stdin(script),
                    shell_id=shell_id,
                    running=LOST_WHILE_RUNNING,
                )
            line = inline_cmd(script)
            if line is not None:
                return await self.execute(f'{CMD} "{line}"', stream, shell_id=shell_id, running=LOST_WHILE_RUNNING)
            return await self._run_cmd_file(batch_file(script), stream, shell_id)

    async def _run_cmd_file(self, body: bytes, stream: OnOutput, shell_id: str | None) -> int:
        """Write a batch file to a guest temporary file over stdin, run it, delete it."""
        path = rf"%TEMP%\beachhead-{secrets.token_hex(6)}.cmd"
        try:
            status, out, err = await self.cmd(f'findstr "^" > "{path}"', stdin=body, shell_id=shell_id)
            if status != 0:
                raise StepFailed("run", f"cannot write the script to {path}: {(err or out).strip()}")
            return await self.execute(f'{CMD} ""{path}""', stream, shell_id=shell_id, running=LOST_WHILE_RUNNING)
        finally:
            with contextlib.suppress(BeachheadError):
                await asyncio.shield(self.cmd(f'del /f /q "{path}"', shell_id=shell_id))

    # -- files ------------------------------------------------------------------------------
    async def put_file(self, local: Path, remote: str, mode: int | None, partial: str | None = None) -> FileInfo:
        """Upload through ``partial`` (see :mod:`beachhead.plugins.winrm_transfer`)."""
        from beachhead.plugins.winrm_transfer import put_file

        return await put_file(self, local, remote, partial)

    async def get_file(self, remote: str, local: Path) -> FileInfo:
        """Download and verify (see :mod:`beachhead.plugins.winrm_transfer`)."""
        from beachhead.plugins.winrm_transfer import get_file

        return await get_file(self, remote, local)

    async def stat(self, remote: str) -> RemoteStat:
        """Whether ``remote`` exists and is a file or a directory (``cd`` succeeds only
        for a directory; ``dir /b`` names an existing file). Windows keeps no mode."""
        path = guest_path(remote)
        status, _, _ = await self.cmd(f'cd "{path}"')
        if status == 0:
            return RemoteStat(remote, exists=True, is_file=False)
        status, out, _ = await self.cmd(f'dir /b "{path}"')
        return RemoteStat(remote, exists=status == 0 and bool(out.strip()), is_file=True)

    async def remove(self, remote: str) -> None:
        """Delete a guest file (one already gone is fine); a partial's base64 staging
        file goes with it. ``del`` reports success even when it fails, so the file's
        absence is checked."""
        path = guest_path(remote)
        await self.cmd(f'del /f /q "{path}"')
        if remote.endswith(".part"):
            await self.cmd(f'del /f /q "{path}.b64"')
        if (await self.stat(remote)).exists:
            raise StepFailed(f"remove {remote}", "the guest kept the file (in use, or access denied)")

    async def make_dirs(self, remote_dir: str) -> list[str]:
        """Create ``remote_dir`` and its missing parents; return those created, outermost first."""
        pure = PureWindowsPath(guest_path(remote_dir))
        missing: list[str] = []
        for folder in [pure, *pure.parents]:
            if str(folder) in (pure.anchor, ".") or (await self.stat(str(folder))).exists:
                break
            missing.append(str(folder))
        for directory in reversed(missing):
            status, out, err = await self.cmd(f'mkdir "{directory}"')
            if status != 0:
                raise StepFailed(f"make directory {directory}", (err or out).strip() or f"exit status {status}")
        return list(reversed(missing))

    async def remove_dir(self, remote_dir: str) -> bool:
        """Remove an empty directory; False when it holds something (left alone)."""
        if not (await self.stat(remote_dir)).exists:
            return True
        await self.cmd(f'rmdir "{guest_path(remote_dir)}"')
        return not (await self.stat(remote_dir)).exists

    async def close(self) -> None:
        """Delete the shared shell and close the connections."""
        shell, self._shell_id = self._shell_id, None
        if shell is not None:
            with contextlib.suppress(BeachheadError):
                await asyncio.wait_for(self.call(lambda p: p.close_shell(shell, close_session=True)), END_COMMAND_S)
        for protocol in (self.protocol, self._control):
            if protocol is not None:
                with contextlib.suppress(Exception):
                    protocol.transport.close_session()


def _send_piece(protocol: LoggedProtocol, *, shell: str, command_id: str, data: bytes) -> None:
    wsman.send(protocol, shell, command_id, data, False)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def guest_path(remote: str) -> str:
    """``remote`` as cmd.exe takes it: backslashes, ``~`` the login's profile folder. A
    double quote cannot be in a Windows path (and would break the quoting)."""
    if '"' in remote or "\n" in remote:
        raise StepFailed(remote, "a Windows path cannot hold a double quote or a line break")
    path = remote.replace("/", "\\")
    if path == "~" or path.startswith("~\\"):
        path = "%USERPROFILE%" + path[1:]
    return path


class ClixmlDecoder:
    """PowerShell's error stream in CLIXML (``#< CLIXML`` then ``<Objs>`` with
    ``<S S="Error">`` strings, as PowerShell writes it when its stderr is not a console)
    as plain text, decoded as it arrives; progress records are dropped. A stream that
    does not start with the marker passes unchanged."""

    MARKER = b"#< CLIXML"
    _ERROR = re.compile(rb'<S S="Error">(.*?)</S>', re.S)
    _ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")

    def __init__(self, sink: StreamCapture) -> None:
        self.sink = sink
        self.buffer = b""
        self.clixml: bool | None = None

    def write(self, data: bytes) -> None:
        """Take the next block of the stream."""
        self.buffer += data
        if self.clixml is None:
            head = self.buffer.lstrip()
            if len(head) < len(self.MARKER) and self.MARKER.startswith(head):
                return
            self.clixml = head.startswith(self.MARKER)
            if self.clixml:
                self.buffer = head[len(self.MARKER) :]
        if not self.clixml:
            self.sink.write(self.buffer)
            self.buffer = b""
            return
        end = 0
        for match in self._ERROR.finditer(self.buffer):
            self.sink.write(self.decode(match.group(1)).encode("utf-8"))
            end = match.end()
        rest = self.buffer[end:]
        pending = rest.rfind(b"<S ")
        self.buffer = rest[pending:] if pending >= 0 else rest[-16:]

    def finish(self) -> None:
        """The stream ended: pass on what could not be decided."""
        if self.clixml is None and self.buffer:
            self.sink.write(self.buffer)
        self.buffer = b""

    @classmethod
    def decode(cls, text: bytes) -> str:
        """One CLIXML string: XML entities and ``_xHHHH_`` escapes undone."""
        from xml.sax.saxutils import unescape

        plain = unescape(text.decode("utf-8", "replace"), {"&quot;": '"', "&apos;": "'"})
        return cls._ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), plain)


async def open_session(target: TargetContext) -> WinrmSession:
    """Connect to the guest's WinRM endpoint: read its WS-Man configuration (for
    ``MaxEnvelopeSizekb``) and open the shared shell. Every failure is
    :class:`ChannelUnavailable`, retryable for an HTTP 5xx, a reset or refused
    connection or a timeout (the engine's connection attempts retry those with backoff,
    ``--retries``), not for wrong credentials or an untrusted certificate."""
    route = target.target.winrm
    host = target.guest_address()
    name = target.target.name
    if route is None or host is None:
        raise ChannelUnavailable(NAME, name, "no winrm route or no guest address")
    wire_log = target.run.wire_log
    protocol = wsman.make_protocol(host, route, wire_log)
    session = WinrmSession(name, host, route, wire_log, protocol)
    started = time.monotonic()
    size = await session.call(_read_max_envelope, connecting=True)
    if size:
        session.set_max_envelope(size)
    await session.open_shared_shell(connecting=True)
    log.info(
        "winrm.connected",
        target=name,
        endpoint=protocol.endpoint,
        transport=str(route.transport),
        max_envelope=session.max_envelope,
        seconds=round(time.monotonic() - started, 3),
    )
    return session


def _read_max_envelope(protocol: LoggedProtocol) -> int | None:
    """The endpoint's MaxEnvelopeSizekb, or None when it will not tell (access denied,
    an old endpoint): the protocol default is used then."""
    try:
        return wsman.max_envelope_size(protocol)
    except WSManFaultError:
        return None


if TYPE_CHECKING:
    _conforms: type[ChannelSession] = WinrmSession  # mypy checks the session protocol here
