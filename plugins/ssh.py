"""The ``ssh`` channel: commands, uploads and downloads over OpenSSH (asyncssh).

One connection per target is reused across steps; SFTP is opened on it lazily. Uploads
land in a temporary file beside the destination and are renamed into place, so a
failed transfer never leaves a half-written file. Every transfer is verified: the
guest's size and sha256 must match the local file's.
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

from beachhead.agent.channel import (
    ChannelInfo,
    ChannelSession,
    CommandRequest,
    Direction,
    FileInfo,
    Medium,
    Outcome,
    Prerequisite,
    RemoteStat,
)
from beachhead.agent.checksums import sha256_of
from beachhead.agent.errors import ChannelError, ChannelUnavailable, StepFailed, VerificationFailed
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import Capability
from beachhead.agent.targets import OsFamily, Target

NAME = "ssh"
KEEPALIVE_INTERVAL_S = 30

INFO = ChannelInfo(
    name=NAME,
    summary="OpenSSH on the guest's network: commands with exit status, SFTP transfers",
    direction=Direction.PUSH,
    medium=Medium.GUEST_NETWORK,
    os_families=frozenset({OsFamily.LINUX, OsFamily.WINDOWS}),
    prerequisites=(Prerequisite.GUEST_NETWORK, Prerequisite.CREDENTIALS),
    capabilities=frozenset({Capability.RUN, Capability.PUT_FILE, Capability.GET_FILE}),
    preference=100,
    target_schemes=frozenset({"ssh"}),
)


def _sftp_path(remote: str) -> str:
    # SFTP starts in the login's home directory; "~/x" means "x" there.
    return remote[2:] if remote.startswith("~/") else remote


class SshSession:
    """An open SSH connection to one guest (implements :class:`ChannelSession`)."""

    channel = NAME

    def __init__(self, target: Target, connection: asyncssh.SSHClientConnection) -> None:
        self.target = target
        self.connection = connection
        self._sftp: asyncssh.SFTPClient | None = None
        self._sudo_needs_password: bool | None = None

    # -- errors -------------------------------------------------------------------------
    def _lost(self, exc: BaseException) -> ChannelError:
        return ChannelError(NAME, self.target.name, f"connection lost: {exc}", retryable=True)

    def _refused(self, action: str, exc: asyncssh.SFTPError) -> StepFailed:
        return StepFailed(action, f"{action}: {exc.reason or type(exc).__name__}")

    # -- commands -----------------------------------------------------------------------
    async def run(self, request: CommandRequest) -> Outcome:
        """Run ``request`` to completion. On cancellation (timeout, Ctrl-C) every process
        the command started in the guest is killed before the channel closes."""
        marker = f"beachhead-task-{secrets.token_hex(8)}"
        tagged = f"BEACHHEAD_TASK={marker}; export BEACHHEAD_TASK; {request.command}"
        command, stdin = await self._with_become(request, tagged)
        started = datetime.now(UTC)
        try:
            process = await self.connection.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        try:
            if stdin:
                process.stdin.write(stdin)
            process.stdin.write_eof()
            completed = await process.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_remote(marker, request.become))
            process.close()
            raise
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        signal = completed.exit_signal[0] if completed.exit_signal else None
        return Outcome(
            command=request.description,
            exit_status=completed.exit_status,
            stdout=_text(completed.stdout),
            stderr=_text(completed.stderr),
            started=started,
            ended=datetime.now(UTC),
            signal=signal,
        )

    async def _kill_remote(self, marker: str, become: bool) -> None:
        """Kill every guest process the command started. The command exported ``marker``
        in its environment, which survives exec and is inherited by its children; a signal
        request alone would reach only the top process."""
        script = (
            "for p in /proc/[0-9]*; do "
            f'grep -qs "BEACHHEAD_TASK={marker}" "$p/environ" && kill -KILL "${{p#/proc/}}"; '
            "done; true"
        )
        request = CommandRequest(command=f"sh -c {shlex.quote(script)}", description="kill", become=become)
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
        if self.target.password is None:
            raise StepFailed(request.description, "sudo asks for a password and the target has no password_env")
        # sudo -S reads exactly one line; the rest of stdin goes to the command.
        secret = self.target.password.reveal().encode() + b"\n"
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

    async def put_file(self, local: Path, remote: str, mode: int | None) -> FileInfo:
        """Upload atomically (temporary file, then rename), keep the replaced file's mode
        unless ``mode`` is given, and verify size and sha256 in the guest."""
        sftp = await self.sftp()
        path = _sftp_path(remote)
        posix = PurePosixPath(path)
        partial = str(posix.with_name(f".{posix.name}.beachhead-{secrets.token_hex(4)}.part"))
        expected_sha, size = await asyncio.to_thread(lambda: (sha256_of(local), local.stat().st_size))
        try:
            if mode is None:
                before = await self.stat(remote)
                mode = before.mode if before.exists else None
            await sftp.put(str(local), partial)
            if mode is not None:
                await sftp.chmod(partial, mode)
            await sftp.posix_rename(partial, path)
        except asyncssh.SFTPError as exc:
            await self._discard(partial)
            raise self._refused(f"upload to {remote}", exc) from exc
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc
        return await self._verify(remote, expected_sha, size, mode)

    async def _discard(self, path: str) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            await (await self.sftp()).remove(path)

    async def _verify(self, remote: str, expected_sha: str, size: int, mode: int | None) -> FileInfo:
        written = await self.stat(remote)
        if not written.exists or written.size != size:
            raise VerificationFailed(f"upload to {remote}", f"size in guest {written.size}, expected {size}")
        if mode is not None and written.mode != mode:
            raise VerificationFailed(f"upload to {remote}", f"mode in guest {written.mode:o}, expected {mode:o}")
        actual = await self._remote_sha256(remote) or await self._sha256_by_reading(remote)
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


def _text(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


async def open_session(target: Target, connect_timeout: float) -> SshSession:
    """Connect and authenticate; map every failure to :class:`ChannelUnavailable`,
    retryable when the guest may simply not be up yet."""
    options: dict[str, Any] = {
        "username": target.user or getpass.getuser(),
        "connect_timeout": target.connect_timeout or connect_timeout,
        "keepalive_interval": KEEPALIVE_INTERVAL_S,
    }
    if target.known_hosts_ignore:
        options["known_hosts"] = None
    elif target.known_hosts is not None:
        options["known_hosts"] = str(target.known_hosts)
    if target.key_file is not None:
        options["client_keys"] = [str(target.key_file)]
        options["agent_path"] = None
        if target.passphrase is not None:
            options["passphrase"] = target.passphrase.reveal()
    elif target.password is not None:
        options["client_keys"] = None
        options["agent_path"] = None
    if target.password is not None:
        options["password"] = target.password.reveal()

    def unavailable(reason: str, retryable: bool) -> ChannelUnavailable:
        return ChannelUnavailable(NAME, target.name, reason, retryable=retryable)

    try:
        connection = await asyncssh.connect(target.host, target.port, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise unavailable(f"host key of {target.address} not verifiable: {exc.reason}", False) from None
    except asyncssh.PermissionDenied:
        raise unavailable(f"authentication failed for user {options['username']}", False) from None
    except asyncssh.DisconnectError as exc:
        raise unavailable(f"disconnected by {target.address}: {exc.reason}", True) from None
    except (TimeoutError, asyncssh.ConnectionLost) as exc:
        raise unavailable(f"no answer from {target.address}: {exc or 'timed out'}", True) from None
    except ConnectionRefusedError:
        raise unavailable(f"connection refused by {target.address}", True) from None
    except OSError as exc:
        raise unavailable(f"cannot reach {target.address}: {exc.strerror or exc}", True) from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        raise unavailable(f"cannot use the private key {target.key_file}: {exc}", False) from None
    return SshSession(target, connection)


@hookimpl
def beachhead_channels() -> list[ChannelInfo]:
    """Declare the ssh channel."""
    return [INFO]


@hookimpl
def beachhead_unmet_prerequisites(channel: str, target: Target) -> list[str] | None:
    """An ssh:// target names its address; credentials may come from the agent."""
    if channel != NAME:
        return None
    return [] if target.host else [Prerequisite.GUEST_NETWORK.value]


@hookimpl
def beachhead_connect(channel: str, target: Target, connect_timeout: float) -> Any:
    """Open an SSH session for targets this channel reaches."""
    if channel != NAME:
        return None
    return open_session(target, connect_timeout)


if TYPE_CHECKING:
    _conforms: type[ChannelSession] = SshSession  # mypy checks the session protocol here
