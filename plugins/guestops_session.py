"""The ``guestops`` channel's sessions: commands and files through VMware Tools, by the
vSphere API alone, with no guest network (kept apart from :mod:`beachhead.plugins.guestops`
so that loading the plugin does not load pyVmomi).

A command runs through ``StartProgramInGuest`` with its stdout and stderr redirected to
guest temporary files (and its stdin, a script or environment values, read from a
0600 one that a Linux guest's shell deletes before the command starts; a Windows
script travels as :mod:`beachhead.agent.windows_scripts` describes); completion is
awaited with ``ListProcessesInGuest`` at a short, growing interval; the output files
are streamed through transfer URLs into the step's output sink, then deleted. While a
command runs, a lost vCenter connection (a restart, a network blip) or a moment without
guest operations is ridden out: the guest process goes on, and waiting and collecting
resume once the vCenter answers again. A timeout or Ctrl-C ends the command's whole
process tree in a Linux guest (:mod:`beachhead.agent.guest_tasks`). Uploads
and downloads use the same transfer URLs (their ``*`` host replaced by the vCenter's)
and are verified: size from the API, sha256 computed in the guest (Linux) or over a
second download (Windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import structlog
from pyVmomi import vim, vmodl

from beachhead.agent import guest_tasks
from beachhead.agent.channel import (
    ChannelSession,
    CommandRequest,
    FileInfo,
    Outcome,
    RemoteStat,
    ShellScript,
    partial_path,
)
from beachhead.agent.checksums import file_sha256
from beachhead.agent.errors import BeachheadError, ChannelError, ChannelUnavailable, StepFailed, VerificationFailed
from beachhead.agent.output import OutputSink, StreamCapture
from beachhead.agent.targets import OsFamily, Target
from beachhead.agent.vsphere.connection import VCenter
from beachhead.agent.vsphere.states import VmState, os_family_of
from beachhead.agent.windows_scripts import POWERSHELL, batch_file, inline_cmd, powershell_stdin
from beachhead.plugins.guestops import NAME

if TYPE_CHECKING:
    from beachhead.agent.context import TargetContext

POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0
POLL_GROWTH = 1.5
TRANSFER_TIMEOUT_S = 3600
WINDOWS_CMD = r"C:\Windows\System32\cmd.exe"
WINDOWS_TASKKILL = r"C:\Windows\System32\taskkill.exe"
CHUNK = 1 << 20
# How long a running command's vCenter may stay unreachable before the step gives up
# (a vCenter service restart takes minutes); the step's own timeout still bounds it.
RIDE_OUT_S = 300.0
RIDE_OUT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 5.0)
# Ending a command after a timeout or Ctrl-C: the kill script, then TerminateProcessInGuest.
END_PROGRAM_S = 15.0

T = TypeVar("T")
log = structlog.get_logger("beachhead.guestops")


class GuestopsSession:
    """Guest operations on one VM (implements :class:`ChannelSession`)."""

    channel = NAME

    def __init__(
        self, target: Target, vcenter: VCenter, vm: Any, os_family: OsFamily, managers: tuple[Any, Any]
    ) -> None:
        self.target = target
        self.vcenter = vcenter
        self.vm = vm
        self.os_family = os_family
        assert target.guest_password is not None
        self.auth = vim.vm.guest.NamePasswordAuthentication(
            username=target.guest_user or "", password=target.guest_password.reveal()
        )
        self.processes, self.files = managers  # the process and file managers
        self._http: aiohttp.ClientSession | None = None
        self._home: str | None = None

    @property
    def windows(self) -> bool:
        """True for a Windows guest."""
        return self.os_family is OsFamily.WINDOWS

    # -- calls and their faults ---------------------------------------------------------
    async def _guest(self, action: str, method: Any, *args: Any, expected: tuple[type[BaseException], ...] = ()) -> Any:
        """Call a guest operation, mapping vSphere's faults to the engine's errors (except
        the ``expected`` ones, which the caller handles)."""
        try:
            return await self.vcenter.call(method, self.vm, self.auth, *args)
        except expected:
            raise
        except vim.fault.InvalidGuestLogin:
            raise ChannelError(NAME, self.target.name, "the guest refused the user name or password") from None
        except vim.fault.InvalidPowerState:
            raise ChannelError(NAME, self.target.name, "the VM is powered off") from None
        except vim.fault.GuestOperationsUnavailable:
            raise ChannelError(
                NAME, self.target.name, "guest operations unavailable (VMware Tools not running)", retryable=True
            ) from None
        except vim.fault.FileNotFound as fault:
            raise StepFailed(action, f"no such file or directory: {fault.file or action}") from None
        except vim.fault.FileAlreadyExists as fault:
            raise StepFailed(action, f"already exists: {fault.file}") from None
        except (vim.fault.FileFault, vim.fault.GuestOperationsFault, vim.fault.NoPermission) as fault:
            raise StepFailed(action, _fault_text(fault)) from None
        except vmodl.MethodFault as fault:
            raise ChannelError(NAME, self.target.name, _fault_text(fault)) from None

    # -- paths ----------------------------------------------------------------------------
    async def path(self, remote: str) -> str:
        """``remote`` with a leading ``~`` made the guest login's home directory."""
        if remote != "~" and not remote.startswith(("~/", "~\\")):
            return remote
        if self._home is None:
            variable = "USERPROFILE" if self.windows else "HOME"
            read = self.processes.ReadEnvironmentVariableInGuest
            values = await self._guest("read the home directory", read, [variable])
            found = [value.partition("=")[2] for value in values or () if value.startswith(f"{variable}=")]
            if not found:
                raise StepFailed(remote, f"the guest has no {variable} to resolve ~")
            self._home = found[0]
        separator = "\\" if self.windows else "/"
        return self._home.rstrip("/\\") + (separator + remote[2:] if len(remote) > 1 else "")

    def _split(self, path: str) -> tuple[str, str]:
        pure = PureWindowsPath(path) if self.windows else PurePosixPath(path)
        return str(pure.parent), pure.name

    # -- commands -------------------------------------------------------------------------
    async def run(self, request: CommandRequest, output: OutputSink | None = None) -> Outcome:
        """Run a command; stdout and stderr come back through guest temporary files,
        streamed into ``output``."""
        output = output if output is not None else OutputSink()
        started = datetime.now(UTC)
        made: list[str] = []
        marker = guest_tasks.new_marker()
        pid: int | None = None
        started_pid: int | None = None
        try:
            out = await self._temp_file(".out", made)
            err = await self._temp_file(".err", made)
            command, stdin_data = request.command, request.stdin
            if self.windows and request.script is not None:
                command, stdin_data = await self._windows_script(request.script, made)
            stdin = None
            if stdin_data is not None:
                stdin = await self._temp_file(".in", made)
                await self._put_bytes(stdin_data, stdin, 0o600)
            spec = self._program(request, command, marker, stdin, out, err)
            pid = started_pid = await self._guest(request.description, self.processes.StartProgramInGuest, spec)
            exit_code = await self._wait_for_exit(pid, request.description)
            pid = None
            await self._stream_into(out, output.stdout)
            await self._stream_into(err, output.stderr)
        except asyncio.CancelledError:
            if pid is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._end_program(pid, marker, request.become))
            raise
        finally:
            output.finish()
            for path in made:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._guest(f"delete {path}", self.files.DeleteFileInGuest, path))
        return Outcome(
            request.command,
            exit_code,
            output.stdout.text(),
            output.stderr.text(),
            started,
            datetime.now(UTC),
            pid=started_pid,
        )

    def _sudo(self, become: bool, command: str) -> str:
        if become and self.target.guest_user != "root":
            # No terminal to type a password at: guest operations need passwordless sudo.
            return f"sudo -n -- sh -c {shlex.quote(command)}"
        return command

    async def _windows_script(self, script: ShellScript, made: list[str]) -> tuple[str, bytes | None]:
        """The command line and stdin that run a step's script in a Windows guest (see
        :mod:`beachhead.agent.windows_scripts`). A program started through guest
        operations gets no environment of the caller's choosing (``envVariables``
        would replace the guest's whole environment), so the values travel with the
        script: in PowerShell's stdin, or as the first lines of a batch file in a guest
        temporary file, deleted with the command's other files."""
        if script.shell == "powershell":
            return POWERSHELL, powershell_stdin(script, script.env)
        line = None if script.env else inline_cmd(script)
        if line is not None:
            return f"cmd.exe /d /c {line}", None
        path = await self._temp_file(".cmd", made)
        await self._put_bytes(batch_file(script, script.env), path, 0o600)
        return f'"{path}"', None

    def _program(
        self, request: CommandRequest, command: str, marker: str, stdin: str | None, out: str, err: str
    ) -> Any:
        if self.windows:
            # The command is a program's whole command line (cmd.exe /d /c …, powershell.exe
            # …, a batch file): escaped for this outer cmd.exe, which then passes it on
            # unchanged, so its own && and | stay the program's and the redirections
            # apply to all of it.
            redirect = f'<"{stdin}" ' if stdin else ""
            arguments = f'/d /s /c "{_cmd_escaped(command)} {redirect}>"{out}" 2>"{err}""'
            return vim.vm.guest.ProcessManager.ProgramSpec(programPath=WINDOWS_CMD, arguments=arguments)
        command = self._sudo(request.become, guest_tasks.tagged(marker, command))
        if stdin:
            # Once the shell has it open as stdin, nobody else needs the file (it may hold
            # environment values): gone before the command starts.
            command = f"rm -f -- {shlex.quote(stdin)}; {command}"
        source = shlex.quote(stdin) if stdin else "/dev/null"
        arguments = f"-c {shlex.quote(command)} <{source} >{shlex.quote(out)} 2>{shlex.quote(err)}"
        return vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sh", arguments=arguments)

    async def _end_program(self, pid: int, marker: str, become: bool) -> None:
        """End a command cut short. In a Linux guest a kill script, itself a guest program,
        ends the shell and every process tagged with the command's marker (including those
        that left its session), in a Windows guest ``taskkill /PID pid /T /F`` ends its
        process tree; ``TerminateProcessInGuest`` reaches ``pid`` alone, so it is the
        fallback."""
        async with asyncio.timeout(END_PROGRAM_S):
            if self.windows:
                spec = vim.vm.guest.ProcessManager.ProgramSpec(
                    programPath=WINDOWS_TASKKILL, arguments=f"/PID {pid} /T /F"
                )
            else:
                script = self._sudo(become, guest_tasks.kill_script(marker, pid))
                spec = vim.vm.guest.ProcessManager.ProgramSpec(
                    programPath="/bin/sh", arguments=f"-c {shlex.quote(script)} </dev/null >/dev/null 2>&1"
                )
            with contextlib.suppress(BeachheadError):
                killer = await self._guest("end the command", self.processes.StartProgramInGuest, spec)
                if await self._wait_for_exit(killer, "end the command") == 0:
                    return
            terminate = self.processes.TerminateProcessInGuest
            await self._guest("end the command", terminate, pid, expected=(vim.fault.GuestProcessNotFound,))

    async def _riding_out(self, action: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, tried again while it fails for a reason that passes (the vCenter
        unreachable or restarting, guest operations briefly unavailable), for up to
        :data:`RIDE_OUT_S` from the first failure; the VM is looked up again between tries
        (a restarted vCenter may hand out a new reference)."""
        lost_at: float | None = None
        tries = 0
        while True:
            try:
                result = await attempt()
            except ChannelError as exc:
                if not exc.retryable:
                    raise
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    log.warning("guestops.ride_out", target=self.target.name, action=action, reason=exc.reason)
                elif now - lost_at > RIDE_OUT_S:
                    raise
                await asyncio.sleep(RIDE_OUT_BACKOFF_S[min(tries, len(RIDE_OUT_BACKOFF_S) - 1)])
                tries += 1
                if self.target.vm:
                    with contextlib.suppress(BeachheadError):
                        self.vm = await self.vcenter.find_vm(self.target.vm, fresh=True)
                continue
            if lost_at is not None:
                log.info("guestops.ridden_out", target=self.target.name, action=action, tries=tries)
            return result

    async def _wait_for_exit(self, pid: int, action: str) -> int:
        """Poll the guest's process list until ``pid`` has an exit code, riding out
        vCenter outages between polls."""
        listing = self.processes.ListProcessesInGuest
        delay = POLL_FIRST_S
        while True:
            listed = await self._riding_out(action, lambda: self._guest(action, listing, [pid]))
            info = next((process for process in listed or () if process.pid == pid), None)
            if info is None:
                raise ChannelError(NAME, self.target.name, f"process {pid} vanished from the guest's list")
            if info.endTime is not None or info.exitCode is not None:
                return int(info.exitCode or 0)
            await asyncio.sleep(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX_S)

    async def _temp_file(self, suffix: str, made: list[str]) -> str:
        create = self.files.CreateTemporaryFileInGuest
        path = str(await self._guest("create a temporary file", create, "beachhead-", suffix, None))
        made.append(path)
        return path

    # -- transfers --------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT_S, sock_connect=30)
            self._http = self.vcenter.http_session(timeout, send_session=False, limit=8)
        return self._http

    def _transfer_url(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.hostname == "*":
            base = urlsplit(self.vcenter.http_base())
            return parts._replace(scheme=base.scheme, netloc=base.netloc).geturl()
        return url

    async def _put_bytes(self, data: bytes | Path, remote: str, mode: int | None) -> None:
        size = (await asyncio.to_thread(data.stat)).st_size if isinstance(data, Path) else len(data)
        attributes = (
            vim.vm.guest.FileManager.WindowsFileAttributes()
            if self.windows
            else vim.vm.guest.FileManager.PosixFileAttributes(permissions=mode)
        )
        url = await self._guest(
            f"upload to {remote}", self.files.InitiateFileTransferToGuest, remote, attributes, size, True
        )
        body: Any = data if isinstance(data, bytes) else _read_chunks(data)
        try:
            async with self._client().put(self._transfer_url(url), data=body) as response:
                if response.status >= 300:
                    raise StepFailed(f"upload to {remote}", f"transfer refused: HTTP {response.status}")
        except aiohttp.ClientError as exc:
            raise self._transfer_failed("to", exc) from None

    async def _stream_into(self, remote: str, capture: StreamCapture) -> None:
        """Download ``remote`` block by block into ``capture``, never whole in memory; a
        transfer cut short starts again and skips what already arrived."""
        received = 0

        async def attempt() -> None:
            nonlocal received
            url, _ = await self._from_guest(remote)
            skip = received
            try:
                async with self._client().get(self._transfer_url(url)) as response:
                    if response.status >= 300:
                        raise StepFailed(f"download {remote}", f"transfer refused: HTTP {response.status}")
                    async for block in response.content.iter_chunked(CHUNK):
                        if skip >= len(block):
                            skip -= len(block)
                            continue
                        block, skip = block[skip:], 0
                        capture.write(block)
                        received += len(block)
            except aiohttp.ClientError as exc:
                raise self._transfer_failed("from", exc) from None

        await self._riding_out(f"read {remote}", attempt)

    async def _get_bytes(self, remote: str, *, expected: tuple[type[BaseException], ...] = ()) -> bytes:
        url, _ = await self._from_guest(remote, expected=expected)
        try:
            async with self._client().get(self._transfer_url(url)) as response:
                if response.status >= 300:
                    raise StepFailed(f"download {remote}", f"transfer refused: HTTP {response.status}")
                return await response.read()
        except aiohttp.ClientError as exc:
            raise self._transfer_failed("from", exc) from None

    def _transfer_failed(self, direction: str, exc: Exception) -> ChannelError:
        return ChannelError(NAME, self.target.name, f"transfer {direction} the guest failed: {exc}", retryable=True)

    async def _from_guest(self, remote: str, *, expected: tuple[type[BaseException], ...] = ()) -> tuple[str, int]:
        info = await self._guest(
            f"download {remote}", self.files.InitiateFileTransferFromGuest, remote, expected=expected
        )
        return str(info.url), int(info.size)

    async def _download(self, remote: str, local: Path) -> tuple[int, str]:
        """Stream ``remote`` to ``local``; return the size the API announced and the
        sha256 of what arrived."""
        url, size = await self._from_guest(remote)
        digest = hashlib.sha256()
        try:
            async with self._client().get(self._transfer_url(url)) as response:
                if response.status >= 300:
                    raise StepFailed(f"download {remote}", f"transfer refused: HTTP {response.status}")
                with local.open("wb") as stream:
                    async for block in response.content.iter_chunked(CHUNK):
                        stream.write(block)
                        digest.update(block)
        except aiohttp.ClientError as exc:
            raise self._transfer_failed("from", exc) from None
        return size, digest.hexdigest()

    async def _guest_sha256(self, remote: str) -> str:
        """The guest's own sha256 of a file: computed in the guest on Linux, over a second
        download on Windows (the command would need PowerShell)."""
        if self.windows:
            with tempfile.TemporaryDirectory(prefix="beachhead-verify-") as scratch:
                return (await self._download(remote, Path(scratch) / "copy"))[1]
        outcome = await self.run(CommandRequest(f"sha256sum -- {shlex.quote(remote)}", f"sha256 of {remote}"))
        if not outcome.ok:
            raise StepFailed(f"verify {remote}", f"sha256sum failed: {outcome.stderr.strip()}")
        return outcome.stdout.split()[0]

    async def put_file(self, local: Path, remote: str, mode: int | None, partial: str | None = None) -> FileInfo:
        """Upload through a transfer URL into ``partial``, renamed into place, keeping a
        replaced file's mode unless ``mode`` is given, then verify the guest's size,
        mode and sha256."""
        path = await self.path(remote)
        partial = await self.path(partial) if partial else partial_path(path, secrets.token_hex(4))
        if mode is None and not self.windows:
            before = await self.stat(path)
            mode = before.mode if before.exists else 0o644
        try:
            await self._put_bytes(local, partial, mode)
        except StepFailed:
            with contextlib.suppress(BeachheadError):
                await self._guest(f"delete {partial}", self.files.DeleteFileInGuest, partial)
            raise
        await self._guest(f"rename {partial}", self.files.MoveFileInGuest, partial, path, True)
        expected_sha, expected_size = await file_sha256(local)
        written = await self.stat(path)
        actual_sha = await self._guest_sha256(path)
        if (written.size, actual_sha) != (expected_size, expected_sha):
            raise VerificationFailed(
                f"upload to {remote}",
                f"the guest holds {written.size} bytes sha256 {actual_sha}, "
                f"expected {expected_size} bytes sha256 {expected_sha}",
            )
        if mode is not None and written.mode is not None and written.mode != mode:
            raise VerificationFailed(f"upload to {remote}", f"mode is {written.mode:o}, expected {mode:o}")
        return FileInfo(path, expected_size, expected_sha, written.mode)

    async def get_file(self, remote: str, local: Path) -> FileInfo:
        """Download through a transfer URL into ``local`` (via a temporary file beside it)
        and verify size and sha256 against the guest's."""
        path = await self.path(remote)
        partial = local.with_name(f".{local.name}.beachhead-part")
        try:
            size, sha = await self._download(path, partial)
            received = partial.stat().st_size
            guest_sha = await self._guest_sha256(path) if not self.windows else sha
            if (received, sha) != (size, guest_sha):
                raise VerificationFailed(
                    f"download {remote}",
                    f"received {received} bytes sha256 {sha}, the guest has {size} bytes sha256 {guest_sha}",
                )
            partial.replace(local)
        finally:
            partial.unlink(missing_ok=True)
        return FileInfo(str(local), size, sha)

    # -- file system ----------------------------------------------------------------------
    async def stat(self, remote: str) -> RemoteStat:
        """Whether ``remote`` exists, with its size, mode and kind."""
        path = await self.path(remote)
        parent, name = self._split(path)
        if not name:  # a root such as / or C:\
            return RemoteStat(path, True, is_file=False)
        try:
            listing = await self._guest(
                f"stat {remote}", self.files.ListFilesInGuest, parent, 0, 1, f"^{re.escape(name)}$"
            )
        except StepFailed:
            return RemoteStat(path, False)
        files = listing.files or []
        if not files:
            return RemoteStat(path, False)
        info = files[0]
        mode = getattr(info.attributes, "permissions", None)
        return RemoteStat(
            path,
            True,
            size=int(info.size or 0),
            mode=int(mode) & 0o7777 if mode is not None else None,
            is_file=info.type == "file",
        )

    async def remove(self, remote: str) -> None:
        """Delete a guest file."""
        path = await self.path(remote)
        await self._guest(f"delete {remote}", self.files.DeleteFileInGuest, path)

    async def make_dirs(self, remote_dir: str) -> list[str]:
        """Create ``remote_dir`` and missing parents; return those created, outermost first."""
        path = await self.path(remote_dir)
        pure = PureWindowsPath(path) if self.windows else PurePosixPath(path)
        missing = []
        for directory in [pure, *pure.parents]:
            if (await self.stat(str(directory))).exists:
                break
            missing.append(str(directory))
        for directory in reversed(missing):
            await self._guest(f"make directory {directory}", self.files.MakeDirectoryInGuest, directory, False)
        return list(reversed(missing))

    async def remove_dir(self, remote_dir: str) -> bool:
        """Remove an empty directory; False when it holds something (left alone)."""
        path = await self.path(remote_dir)
        try:
            await self._guest(
                f"remove directory {remote_dir}",
                self.files.DeleteDirectoryInGuest,
                path,
                False,
                expected=(vim.fault.FileNotFound, vim.fault.DirectoryNotEmpty),
            )
        except vim.fault.FileNotFound:
            return True
        except vim.fault.DirectoryNotEmpty:
            return False
        return True

    async def close(self) -> None:
        """Close the HTTP client (the vCenter session is shared and stays open)."""
        if self._http is not None:
            await self._http.close()


def _cmd_escaped(command: str) -> str:
    """``command`` with cmd.exe's special characters outside quotes escaped by ``^``, so
    that cmd.exe runs it as one command line and leaves it as it was."""
    escaped: list[str] = []
    quoted = False
    for char in command:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "&|<>()^":
            escaped.append("^")
        escaped.append(char)
    return "".join(escaped)


def _fault_text(fault: Any) -> str:
    message = getattr(fault, "msg", None) or ""
    return f"{type(fault).__name__}: {message}" if message else type(fault).__name__


async def _read_chunks(path: Path) -> Any:
    with path.open("rb") as stream:
        while block := await asyncio.to_thread(stream.read, CHUNK):
            yield block


async def open_session(target: TargetContext, *, check_login: bool = True) -> GuestopsSession:
    """Find the VM, then wait (within the connect timeout) for guest operations to be
    ready; a powered-off VM or refused guest login is not worth retrying. Without
    ``check_login`` the guest login is first tried by the caller's own first call."""
    name = target.target.name
    try:
        vcenter, vm = await target.vm()
        snapshot = await vcenter.watcher.watch(vm)
    except ChannelUnavailable:
        raise
    except BeachheadError as exc:
        raise ChannelUnavailable(NAME, name, str(exc)) from None
    if not snapshot.satisfies(VmState.POWERED_ON):
        raise ChannelUnavailable(NAME, name, "the VM is powered off (wait for powered_on first)")
    try:
        async with asyncio.timeout(target.target.connect_timeout or target.settings.connect_timeout):
            snapshot = await vcenter.watcher.wait_for(vm, VmState.GUESTOPS_READY)
    except TimeoutError:
        raise ChannelUnavailable(
            NAME, name, "guest operations not ready (VMware Tools not running)", retryable=True
        ) from None
    os_family = target.target.os or os_family_of(snapshot.guest_family, snapshot.guest_id)
    session = GuestopsSession(target.target, vcenter, vm, os_family, await vcenter.guest_managers())
    if not check_login:
        return session
    try:
        await session.path("~")  # checks the guest login now, not in the middle of a step
    except ChannelError as exc:
        raise ChannelUnavailable(NAME, name, exc.reason, retryable=exc.retryable) from None
    except StepFailed:
        pass  # no home directory: only ~ paths will fail
    return session


# Host key files by preference; the first a guest has is the one read.
HOST_KEY_PREFERENCE = ("ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key.pub", "ssh_host_rsa_key.pub")


async def guest_ssh_host_key(target: TargetContext) -> bytes:
    """The guest's SSH host public key (``ssh_host_*_key.pub`` in /etc/ssh, or
    C:\\ProgramData\\ssh on Windows), read through guest operations: the hypervisor's
    authenticated path, not the network an impostor could answer on.

    One key is enough, and costs one file transfer instead of one per key: asyncssh
    offers the server only the algorithms of the keys it trusts, so the server must
    prove it holds this one. Ed25519 is preferred, then ECDSA, then RSA, then any other;
    the Ed25519 key is asked for at once, the directory listed only when it is missing
    (one vCenter call per guest instead of two)."""
    open_already = target.selector.sessions.get(NAME)
    session = (
        open_already if isinstance(open_already, GuestopsSession) else await open_session(target, check_login=False)
    )
    try:
        directory = r"C:\ProgramData\ssh" if session.windows else "/etc/ssh"
        separator = "\\" if session.windows else "/"
        with contextlib.suppress(vim.fault.FileNotFound):
            return await session._get_bytes(
                f"{directory}{separator}{HOST_KEY_PREFERENCE[0]}", expected=(vim.fault.FileNotFound,)
            )
        listing = await session._guest(
            f"list {directory}", session.files.ListFilesInGuest, directory, 0, 64, r"^ssh_host_.*_key\.pub$"
        )
        rank = {name: place for place, name in enumerate(HOST_KEY_PREFERENCE)}
        names = sorted((str(info.path) for info in listing.files or ()), key=lambda name: rank.get(name, len(rank)))
        if not names:
            raise ChannelUnavailable(
                NAME, target.target.name, f"the guest has no SSH host key to pin ({directory}: no ssh_host_*_key.pub)"
            )
        return await session._get_bytes(f"{directory}{separator}{names[0]}")
    finally:
        if session is not open_already:
            await session.close()


if TYPE_CHECKING:
    _conforms: type[ChannelSession] = GuestopsSession  # mypy checks the session protocol here
