"""What a channel is: its taxonomy entry, and the session it opens on one guest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from beachhead.agent.targets import OsFamily

if TYPE_CHECKING:
    from beachhead.agent.context import TargetContext
    from beachhead.agent.output import OutputSink


# How a command ended when its channel lost the connection before the exit status came.
LOST_WHILE_RUNNING = "connection lost while running; exit status unknown"


class Capability(StrEnum):
    """What a channel can do; a step kind asks for one of these."""

    RUN = "run"
    PUT_FILE = "put_file"
    GET_FILE = "get_file"
    TYPE_KEYS = "type_keys"
    PUBLISH_USERDATA = "publish_userdata"


class Direction(StrEnum):
    """Whether Beachhead pushes into the guest or the guest pulls from Beachhead."""

    PUSH = "push"
    PULL = "pull"


class Medium(StrEnum):
    """What carries the channel's traffic."""

    GUEST_NETWORK = "guest network"
    HYPERVISOR_API = "hypervisor API"
    CONSOLE = "console"


class Prerequisite(StrEnum):
    """What must hold before a channel can be used."""

    GUEST_NETWORK = "guest network"
    VMWARE_TOOLS = "VMware Tools"
    CREDENTIALS = "credentials"
    CONSOLE = "console"


@dataclass(frozen=True)
class ChannelInfo:
    """A channel's taxonomy entry, declared by its plugin beside its code.

    ``preference`` gives, per OS family the channel serves, its place in the default
    order for that family: higher is tried first. ``target_schemes`` lists the target
    URI schemes the channel can reach (a ``vsphere://`` VM is reached by every channel
    its target carries credentials for).
    """

    name: str
    summary: str
    direction: Direction
    medium: Medium
    prerequisites: tuple[Prerequisite, ...]
    capabilities: frozenset[Capability]
    preference: Mapping[OsFamily, int]
    target_schemes: frozenset[str]

    @property
    def os_families(self) -> frozenset[OsFamily]:
        """The OS families the channel serves: those it declares a preference for."""
        return frozenset(self.preference)


@dataclass(frozen=True)
class ShellScript:
    """A Windows run step before rendering, for a channel that delivers scripts and
    environment values its own way (the ``winrm`` channel sends the script over the
    command's stdin and the values in its shell's environment, never on a command line).

    ``shell`` is ``powershell`` or ``cmd``; ``text`` the command or the script's text;
    ``is_script`` True for a plan's ``script:`` file."""

    shell: str
    text: str
    is_script: bool = False
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CommandRequest:
    """A command line rendered for the guest, ready for a channel to execute.

    ``stdin`` goes to the command's standard input in full, then end of file. On Linux
    guests it starts with the command's environment values (see
    :mod:`beachhead.agent.render`), which therefore never appear on a command line.
    ``script`` is the unrendered form of a Windows command (see :class:`ShellScript`)."""

    command: str
    description: str
    stdin: bytes | None = None
    become: bool = False
    env_names: tuple[str, ...] = ()
    script: ShellScript | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Outcome:
    """What a command did: exit status, output and timing (like tox's Outcome).

    ``stdout`` and ``stderr`` are the head and tail the channel's
    :class:`~beachhead.agent.output.OutputSink` kept (the whole streams are in its files).
    ``exit_status`` and ``signal`` are both None only when the channel cannot know how
    the command ended."""

    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    started: datetime
    ended: datetime
    signal: str | None = None
    pid: int | None = None  # the guest process, where the channel knows it (guestops)

    @property
    def duration_s(self) -> float:
        """Wall time the command took, in seconds."""
        return (self.ended - self.started).total_seconds()

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_status == 0


@dataclass(frozen=True)
class FileInfo:
    """A file's identity as verified on one side: size, sha256 and permission bits."""

    path: str
    size: int
    sha256: str
    mode: int | None = None


@dataclass(frozen=True)
class RemoteStat:
    """What exists at a guest path before a write replaces it."""

    path: str
    exists: bool
    size: int = 0
    mode: int | None = None
    is_file: bool = True


def partial_path(remote: str, tag: str) -> str:
    """The temporary file an upload to ``remote`` is written through before it is renamed
    into place: a hidden sibling named by ``tag`` (unique per write), so a transfer cut
    short never leaves a half-written ``remote`` and the journal can name what to remove."""
    separator = "\\" if "\\" in remote and "/" not in remote else "/"
    folder, _, name = remote.rpartition(separator)
    return f"{folder}{separator if folder or remote.startswith(separator) else ''}.{name}.beachhead-{tag}.part"


@runtime_checkable
class ChannelSession(Protocol):
    """An open way into one guest. One session per target and channel is reused across
    steps; the engine closes it when the target is done.

    Every method raises :class:`beachhead.agent.errors.ChannelError` when the channel itself fails
    (connection lost) and :class:`beachhead.agent.errors.StepFailed` when the guest refuses the
    operation (no such file, permission denied).
    """

    channel: str

    async def run(self, request: CommandRequest, output: OutputSink | None = None) -> Outcome:
        """Run a command to completion and return its outcome (a non-zero exit is not an
        error here; the engine decides). Every block of stdout and stderr goes to
        ``output.stdout.write`` / ``output.stderr.write`` as it arrives, never collected
        whole; ``output.finish()`` is called before returning (None: a sink of the
        session's own, in memory). A connection lost before the exit status arrived is a
        :class:`beachhead.agent.errors.ChannelError` saying so."""
        ...

    async def put_file(self, local: Path, remote: str, mode: int | None, partial: str | None = None) -> FileInfo:
        """Write ``local`` to ``remote`` through the temporary file ``partial`` (a hidden
        sibling of ``remote`` the caller journals, see :func:`partial_path`; the session
        picks one when not given) renamed into place, then verify it on the guest (size
        and sha256). A refused write removes ``partial``; a lost connection may leave it."""
        ...

    async def get_file(self, remote: str, local: Path) -> FileInfo:
        """Copy ``remote`` to ``local`` and verify the copy against the guest's sha256."""
        ...

    async def stat(self, remote: str) -> RemoteStat:
        """Report whether ``remote`` exists, so a write can record what it replaces."""
        ...

    async def remove(self, remote: str) -> None:
        """Delete ``remote`` (used by undo to remove files a run created)."""
        ...

    async def make_dirs(self, remote_dir: str) -> list[str]:
        """Create ``remote_dir`` and missing parents; return those created, outermost first."""
        ...

    async def remove_dir(self, remote_dir: str) -> bool:
        """Remove an empty directory (undo of :meth:`make_dirs`); False when not empty."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


@dataclass(frozen=True)
class Unmet:
    """A prerequisite of a channel that does not hold now. ``transient`` when it may
    come to hold as the VM changes (an address reported, VMware Tools started), so a
    step with no usable channel waits for the VM's next change instead of failing."""

    reason: str
    transient: bool = False


class Channel(Protocol):
    """What a channel plugin registers (``beachhead_register_channels``): its taxonomy
    entry, which of its prerequisites do not hold for a target now, and how to open a
    session on it."""

    info: ChannelInfo

    def unmet(self, target: TargetContext) -> list[Unmet]:
        """The prerequisites that do not hold now, each with a short reason ("no guest
        address yet"); empty when the channel can be tried. Reads only what ``target``
        already knows (its routes, the VM's last reported state): no I/O."""
        ...

    async def connect(self, target: TargetContext) -> Any:
        """Open a session (a :class:`ChannelSession` for push channels); raise
        :class:`beachhead.agent.errors.ChannelUnavailable` when it cannot, retryable
        when trying again later may succeed."""
        ...
