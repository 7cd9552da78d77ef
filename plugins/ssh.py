"""The ``ssh`` channel: commands, uploads and downloads over OpenSSH (asyncssh).

One connection per target is reused across steps; SFTP is opened on it lazily. A
command's stdout and stderr are read block by block as they arrive and handed to the
step's output sink, never collected whole. Uploads land in a temporary file beside the
destination and are renamed into place, so a failed transfer never leaves a
half-written file. Every transfer is verified: the guest's size and sha256 must match
the local file's (a stat over SFTP and ``sha256sum`` in the guest, sent together). The
upload data in flight is bounded per run (:func:`upload_requests`), so a wide fan-out does
not hold every file in memory at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import secrets
import shlex
import stat
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import asyncssh

from beachhead.agent import guest_tasks
from beachhead.agent.channel import (
    LOST_WHILE_RUNNING,
    Capability,
    ChannelInfo,
    ChannelSession,
    CommandRequest,
    Direction,
    FileInfo,
    Medium,
    Outcome,
    Prerequisite,
    RemoteStat,
    Unmet,
    partial_path,
)
from beachhead.agent.checksums import file_sha256, sha256_of
from beachhead.agent.errors import BeachheadError, ChannelError, ChannelUnavailable, StepFailed, VerificationFailed
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.output import OutputSink, StreamCapture
from beachhead.agent.targets import HostKeyPolicy, OsFamily, SshRoute

if TYPE_CHECKING:
    from beachhead.agent.context import TargetContext

NAME = "ssh"
KEEPALIVE_INTERVAL_S = 30
READ_BLOCK = 256 * 1024  # at most this much of a command's output is read at once
# SFTP write data in flight at once: asyncssh pipelines up to 4 MiB per upload (16
# requests of the server's largest write, 256 KiB on OpenSSH), which 1,000 uploads at once
# hold in memory together. A run's uploads share UPLOAD_BUDGET; each keeps at least two
# requests in flight (it never waits a round trip per block) and at most asyncssh's count.
UPLOAD_BUDGET = 256 * 1024 * 1024
UPLOAD_MIN_REQUESTS = 2


INFO = ChannelInfo(
    name=NAME,
    summary="OpenSSH on the guest's network: commands with exit status, SFTP transfers",
    direction=Direction.PUSH,
    medium=Medium.GUEST_NETWORK,
    prerequisites=(Prerequisite.GUEST_NETWORK, Prerequisite.CREDENTIALS),
    capabilities=frozenset({Capability.RUN, Capability.PUT_FILE, Capability.GET_FILE}),
    # First on Linux; on Windows after WinRM, and only with declared ssh credentials.
    preference={OsFamily.LINUX: 100, OsFamily.WINDOWS: 80},
    target_schemes=frozenset({"ssh", "vsphere"}),
)


def upload_requests(concurrency: int, block_size: int) -> int:
    """How many SFTP writes of ``block_size`` bytes one of ``concurrency`` uploads at
    once keeps in flight: its share of :data:`UPLOAD_BUDGET`, within the bounds above."""
    block_size = max(1, block_size)
    asyncssh_default = max(16, min(4 * 1024 * 1024 // block_size, 128))  # what put() picks itself
    share = UPLOAD_BUDGET // max(1, concurrency) // block_size
    return max(UPLOAD_MIN_REQUESTS, min(asyncssh_default, share))


def _sftp_path(remote: str) -> str:
    # SFTP starts in the login's home directory; "~/x" means "x" there.
    return remote[2:] if remote.startswith("~/") else remote


class SshSession:
    """An open SSH connection to one guest (implements :class:`ChannelSession`)."""

    channel = NAME

    def __init__(
        self, target_name: str, route: SshRoute, connection: asyncssh.SSHClientConnection, concurrency: int = 1
    ) -> None:
        self.target_name = target_name
        self.route = route
        self.connection = connection
        self.concurrency = concurrency  # uploads at once in the run: their share of UPLOAD_BUDGET
        self._sftp: asyncssh.SFTPClient | None = None
        self._sudo_needs_password: bool | None = None

    # -- errors -------------------------------------------------------------------------
    def _lost(self, exc: BaseException) -> ChannelError:
        return ChannelError(NAME, self.target_name, f"connection lost: {exc}", retryable=True)

    def _lost_while_running(self, exc: BaseException | None = None) -> ChannelError:
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None and str(exc) else ""
        return ChannelError(NAME, self.target_name, LOST_WHILE_RUNNING + detail, retryable=True)

    def _refused(self, action: str, exc: asyncssh.SFTPError) -> StepFailed:
        return StepFailed(action, f"{action}: {exc.reason or type(exc).__name__}")

    # -- commands -----------------------------------------------------------------------
    async def run(self, request: CommandRequest, output: OutputSink | None = None) -> Outcome:
        """Run ``request`` to completion, its output streamed into ``output`` as it
        arrives. On cancellation (timeout, Ctrl-C) every process the command started in
        the guest is killed before the channel closes. A connection that ends before the
        exit status arrives is a :class:`ChannelError` ("connection lost while running")."""
        output = output if output is not None else OutputSink()
        marker = guest_tasks.new_marker()
        started = datetime.now(UTC)
        try:
            command, stdin = await self._with_become(request, guest_tasks.tagged(marker, request.command))
            process = await self.connection.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        try:
            if stdin:
                process.stdin.write(stdin)
            process.stdin.write_eof()
            await _pump_both(process, output)
            await process.wait_closed()
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_remote(marker, request.become))
            process.close()
            raise
        except (asyncssh.Error, OSError) as exc:
            raise self._lost_while_running(exc) from exc
        finally:
            output.finish()
        if process.exit_status is None and process.exit_signal is None:
            raise self._lost_while_running()
        return Outcome(
            command=request.description,
            exit_status=process.exit_status,
            stdout=output.stdout.text(),
            stderr=output.stderr.text(),
            started=started,
            ended=datetime.now(UTC),
            signal=process.exit_signal[0] if process.exit_signal else None,
        )

    async def _kill_remote(self, marker: str, become: bool) -> None:
        """Kill every guest process the command started (see :mod:`beachhead.agent.guest_tasks`):
        a signal request alone would reach only the top process."""
        request = CommandRequest(command=guest_tasks.kill_command(marker), description="kill", become=become)
        try:
            kill_command, stdin = await self._with_become(request, request.command)
            await asyncio.wait_for(self.connection.run(kill_command, input=stdin, encoding=None, check=False), 10)
        except (TimeoutError, asyncssh.Error, OSError, StepFailed):
            pass

    async def _with_become(self, request: CommandRequest, command: str) -> tuple[str, bytes | None]:
        if not request.become:
            return command, request.stdin
        if self._sudo_needs_password is None:
            probe = await self.connection.run("sudo -n true", check=False)
            self._sudo_needs_password = probe.exit_status != 0
        if not self._sudo_needs_password:
            return f"sudo -n -- sh -c {shlex.quote(command)}", request.stdin
        if self.route.password is None:
            raise StepFailed(request.description, "sudo asks for a password and the target gives no ssh password")
        # sudo -S reads exactly one line; the rest of stdin goes to the command.
        secret = self.route.password.reveal().encode() + b"\n"
        return f"sudo -S -p '' -- sh -c {shlex.quote(command)}", secret + (request.stdin or b"")

    async def _remote_sha256(self, remote: str) -> str | None:
        """sha256 computed in the guest, or None when it has no sha256sum."""
        result = await self.connection.run(f"sha256sum -- {shlex.quote(remote)}", check=False)
        if result.exit_status != 0 or not result.stdout:
            return None
        return str(result.stdout).split()[0].lstrip("\\")

    # -- files --------------------------------------------------------------------------
    async def sftp(self) -> asyncssh.SFTPClient:
        """The connection's SFTP client, opened on first use."""
        if self._sftp is None:
            try:
                self._sftp = await self.connection.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(exc) from exc
        return self._sftp

    async def stat(self, remote: str) -> RemoteStat:
        """Whether ``remote`` exists, with its size and mode."""
        sftp = await self.sftp()
        try:
            attrs = await sftp.stat(_sftp_path(remote))
        except asyncssh.SFTPNoSuchFile:
            return RemoteStat(remote, exists=False)
        except asyncssh.SFTPError as exc:
            raise self._refused(f"stat {remote}", exc) from exc
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        permissions = attrs.permissions or 0
        return RemoteStat(
            remote,
            exists=True,
            size=attrs.size or 0,
            mode=stat.S_IMODE(permissions),
            is_file=stat.S_ISREG(permissions),
        )

    async def put_file(self, local: Path, remote: str, mode: int | None, partial: str | None = None) -> FileInfo:
        """Upload atomically (through ``partial``, then rename), keep the replaced file's
        mode unless ``mode`` is given, and verify size and sha256 in the guest."""
        sftp = await self.sftp()
        path = _sftp_path(remote)
        partial = _sftp_path(partial) if partial else partial_path(path, secrets.token_hex(4))
        expected_sha, size = await file_sha256(local)
        # The replaced file's mode is asked for alongside the upload (the server answers
        # it before it opens the temporary file) and only needed once that is written.
        replaced = asyncio.ensure_future(self.stat(remote)) if mode is None else None
        try:
            # sparse=False: a sparse copy writes no trailing hole, so the guest file comes out short.
            block = sftp.limits.max_write_len
            await sftp.put(
                str(local),
                partial,
                sparse=False,
                block_size=block,
                max_requests=upload_requests(self.concurrency, block),
            )
            if replaced is not None:
                before = await replaced
                mode = before.mode if before.exists else None
            if mode is not None:
                await sftp.chmod(partial, mode)
            await sftp.posix_rename(partial, path)
        except asyncssh.SFTPError as exc:
            await self._discard(partial)
            raise self._refused(f"upload to {remote}", exc) from exc
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        except StepFailed:  # the stat was refused: nothing is replaced yet
            await self._discard(partial)
            raise
        finally:
            if replaced is not None:
                await _settle(replaced)
        return await self._verify(remote, expected_sha, size, mode)

    async def _discard(self, path: str) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            await (await self.sftp()).remove(path)

    async def _verify(self, remote: str, expected_sha: str, size: int, mode: int | None) -> FileInfo:
        # The stat (SFTP) and the guest's sha256sum (a command) both read the file in
        # place, so they go out together: one round trip instead of two.
        hashing = asyncio.ensure_future(self._remote_sha256(remote))
        try:
            written = await self.stat(remote)
            if not written.exists or written.size != size:
                raise VerificationFailed(f"upload to {remote}", f"size in guest {written.size}, expected {size}")
            if mode is not None and written.mode != mode:
                raise VerificationFailed(f"upload to {remote}", f"mode in guest {written.mode:o}, expected {mode:o}")
            remote_sha = await hashing
        finally:
            await _settle(hashing)
        actual = remote_sha or await self._sha256_by_reading(remote)
        if actual != expected_sha:
            raise VerificationFailed(f"upload to {remote}", f"sha256 in guest {actual}, expected {expected_sha}")
        return FileInfo(remote, size, actual, written.mode)

    async def _sha256_by_reading(self, remote: str) -> str:
        digest = hashlib.sha256()
        sftp = await self.sftp()
        async with sftp.open(_sftp_path(remote), "rb") as stream:
            while block := await stream.read(1 << 20):
                digest.update(block if isinstance(block, bytes) else block.encode())
        return digest.hexdigest()

    async def get_file(self, remote: str, local: Path) -> FileInfo:
        """Download to ``local`` (through a temporary file renamed into place) and verify
        it against the guest's sha256."""
        sftp = await self.sftp()
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.beachhead-{secrets.token_hex(4)}.part")
        try:
            await sftp.get(_sftp_path(remote), str(partial))
        except asyncssh.SFTPError as exc:
            partial.unlink(missing_ok=True)
            raise self._refused(f"download of {remote}", exc) from exc
        except (asyncssh.Error, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise self._lost(exc) from exc
        local_sha, size = await asyncio.to_thread(lambda: (sha256_of(partial), partial.stat().st_size))
        remote_sha = await self._remote_sha256(remote) or await self._sha256_by_reading(remote)
        if remote_sha != local_sha:
            partial.unlink(missing_ok=True)
            raise VerificationFailed(f"download of {remote}", f"sha256 local {local_sha}, in guest {remote_sha}")
        partial.replace(local)
        return FileInfo(str(local), size, local_sha)

    async def remove(self, remote: str) -> None:
        """Delete a guest file; one already gone is fine."""
        sftp = await self.sftp()
        try:
            await sftp.remove(_sftp_path(remote))
        except asyncssh.SFTPNoSuchFile:
            return
        except asyncssh.SFTPError as exc:
            raise self._refused(f"remove {remote}", exc) from exc
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

    async def make_dirs(self, remote_dir: str) -> list[str]:
        """Create ``remote_dir`` and its missing parents, outermost first."""
        sftp = await self.sftp()
        path = PurePosixPath(_sftp_path(remote_dir))
        missing: list[PurePosixPath] = []
        for candidate in [path, *path.parents]:
            if str(candidate) in ("", ".", "/"):
                break
            if await self._is_dir(sftp, str(candidate)):
                break
            missing.append(candidate)
        created = []
        for directory in reversed(missing):
            try:
                await sftp.mkdir(str(directory))
            except asyncssh.SFTPError as exc:
                raise self._refused(f"create directory {directory}", exc) from exc
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(exc) from exc
            created.append(str(directory))
        return created

    async def _is_dir(self, sftp: asyncssh.SFTPClient, path: str) -> bool:
        try:
            return bool(await sftp.isdir(path))
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

    async def remove_dir(self, remote_dir: str) -> bool:
        """Remove an empty directory; False when it holds something (left alone)."""
        sftp = await self.sftp()
        try:
            if await sftp.listdir(_sftp_path(remote_dir)) not in ([], [".", ".."], ["..", "."]):
                return False
            await sftp.rmdir(_sftp_path(remote_dir))
        except asyncssh.SFTPNoSuchFile:
            return True
        except asyncssh.SFTPError as exc:
            raise self._refused(f"remove directory {remote_dir}", exc) from exc
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        return True

    async def close(self) -> None:
        """Close SFTP and the connection."""
        if self._sftp is not None:
            self._sftp.exit()
        self.connection.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self.connection.wait_closed(), timeout=5)


async def _settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs and wait for it to end. Its result or error is
    left alone: what needed it either took it already or failed before it could."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # marks it retrieved (no "exception was never retrieved" at exit)


async def _pump(reader: asyncssh.SSHReader[bytes], capture: StreamCapture) -> None:
    while block := await reader.read(READ_BLOCK):
        capture.write(block)


async def _pump_both(process: asyncssh.SSHClientProcess[bytes], output: OutputSink) -> None:
    """Read stdout and stderr at once until both end: asyncssh stops reading the channel
    while either's buffer is full, so one must not wait for the other."""
    pumps = [
        asyncio.ensure_future(_pump(process.stdout, output.stdout)),
        asyncio.ensure_future(_pump(process.stderr, output.stderr)),
    ]
    try:
        await asyncio.gather(*pumps)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.wait(pumps)


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _known_hosts(target: TargetContext, route: SshRoute) -> Any:
    """What asyncssh checks the server's host key against: the route's known_hosts
    file (asyncssh's default, ~/.ssh/known_hosts, when it names none), nothing when
    told to ignore, the key read from the guest through guest operations, or those the
    guest printed to its file-backed serial port, read through vCenter."""
    if route.host_keys is HostKeyPolicy.IGNORE:
        return None
    if route.host_keys is HostKeyPolicy.SERIAL:
        return ([asyncssh.import_public_key(key) for key in await _serial_host_keys(target)], [], [])
    if route.host_keys is HostKeyPolicy.VSPHERE:
        from beachhead.plugins.guestops_session import guest_ssh_host_key

        return ([asyncssh.import_public_key(await guest_ssh_host_key(target))], [], [])
    return str(route.known_hosts) if route.known_hosts is not None else ()


async def _serial_host_keys(target: TargetContext) -> list[str]:
    """The SSH host keys the guest printed to its VM's file-backed serial ports; the
    channel is unavailable (retryable: the guest may print one yet) when none is there."""
    from beachhead.agent.vsphere.serial_port import printed_host_keys, read_serial_ports

    name = target.target.name
    vcenter, vm = await target.vm()
    ports = await read_serial_ports(vcenter, vm)
    if not ports:
        raise ChannelUnavailable(
            NAME, name, "known_hosts=serial: the VM has no serial port backed by a datastore file", retryable=False
        )
    keys = printed_host_keys("".join(ports.values()))
    if not keys:
        raise ChannelUnavailable(
            NAME, name, f"known_hosts=serial: no SSH host key printed on {', '.join(ports)} yet", retryable=True
        )
    return keys


async def open_session(target: TargetContext) -> SshSession:
    """Connect and authenticate to the guest's address; map every failure to
    :class:`ChannelUnavailable`, retryable when the guest may simply not be up yet."""
    route = target.target.ssh
    host = target.guest_address()
    name = target.target.name
    if route is None or host is None:
        raise ChannelUnavailable(NAME, name, "no ssh route or no guest address")
    endpoint = _endpoint(host, route.port)
    options: dict[str, Any] = {
        "username": route.user or getpass.getuser(),
        "connect_timeout": target.target.connect_timeout or target.settings.connect_timeout,
        "keepalive_interval": KEEPALIVE_INTERVAL_S,
    }
    try:
        known_hosts = await _known_hosts(target, route)
    except ChannelUnavailable:
        raise
    except (BeachheadError, ValueError, asyncssh.KeyImportError) as exc:
        raise ChannelUnavailable(NAME, name, f"cannot read the guest's SSH host keys: {exc}") from None
    if known_hosts != ():
        options["known_hosts"] = known_hosts
    if route.key_file is not None:
        options["client_keys"] = [str(route.key_file)]
        options["agent_path"] = None
        if route.passphrase is not None:
            options["passphrase"] = route.passphrase.reveal()
    elif route.password is not None:
        options["client_keys"] = None
        options["agent_path"] = None
    if route.password is not None:
        options["password"] = route.password.reveal()

    def unavailable(reason: str, retryable: bool) -> ChannelUnavailable:
        return ChannelUnavailable(NAME, name, reason, retryable=retryable)

    try:
        connection = await asyncssh.connect(host, route.port, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        pinned = {
            HostKeyPolicy.VSPHERE: " (pinned from the guest through VMware Tools)",
            HostKeyPolicy.SERIAL: " (pinned from what the guest printed on its serial port)",
        }.get(route.host_keys, "")
        raise unavailable(f"host key of {endpoint} not verifiable{pinned}: {exc.reason}", False) from None
    except asyncssh.PermissionDenied:
        raise unavailable(f"authentication failed for user {options['username']}", False) from None
    except asyncssh.DisconnectError as exc:
        raise unavailable(f"disconnected by {endpoint}: {exc.reason}", True) from None
    except (TimeoutError, asyncssh.ConnectionLost) as exc:
        raise unavailable(f"no answer from {endpoint}: {exc or 'timed out'}", True) from None
    except ConnectionRefusedError:
        raise unavailable(f"connection refused by {endpoint}", True) from None
    except OSError as exc:
        raise unavailable(f"cannot reach {endpoint}: {exc.strerror or exc}", True) from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        raise unavailable(f"cannot use the private key {route.key_file}: {exc}", False) from None
    return SshSession(name, route, connection, target.settings.concurrency)


class SshChannel:
    """The ssh channel: reaches an ssh:// host, or a VM at the address VMware Tools
    reports (or the target's ``address``) with the target's ssh credentials."""

    info = INFO

    def unmet(self, target: TargetContext) -> list[Unmet]:
        """Credentials, the Windows rule, and an address to connect to."""
        route = target.target.ssh
        if route is None:
            return [Unmet("no ssh credentials (ssh_user, ssh_key, ssh_password_env, or a guest login)")]
        if target.os is OsFamily.WINDOWS and not route.declared:
            return [Unmet("on Windows only with declared ssh credentials (ssh_user, ssh_key or ssh_password_env)")]
        if target.guest_address() is None:
            if target.vm_problem:
                return [Unmet(f"no guest address: {target.vm_problem}")]
            return [Unmet("no guest address yet (VMware Tools has reported none)", transient=True)]
        return []

    async def connect(self, target: TargetContext) -> SshSession:
        """Open an SSH session on the guest."""
        return await open_session(target)


@hookimpl
def beachhead_register_channels(register: Any) -> None:
    """Register the ssh channel."""
    register(SshChannel())


if TYPE_CHECKING:
    _conforms: type[ChannelSession] = SshSession  # mypy checks the session protocol here
