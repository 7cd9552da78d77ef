"""What a channel is: its taxonomy entry, and the session it opens on one guest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from beachhead.agent.plans import Capability
from beachhead.agent.targets import OsFamily


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

    ``preference`` orders channels when a plan does not: higher is tried first.
    ``target_schemes`` lists the target URI schemes the channel can reach.
    """

    name: str
    summary: str
    direction: Direction
    medium: Medium
    os_families: frozenset[OsFamily]
    prerequisites: tuple[Prerequisite, ...]
    capabilities: frozenset[Capability]
    preference: int
    target_schemes: frozenset[str]


@dataclass(frozen=True)
class CommandRequest:
    """A command line rendered for the guest, ready for a channel to execute."""

    command: str
    description: str
    stdin: bytes | None = None
    become: bool = False
    env_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What a command did: exit status, output and timing (like tox's Outcome)."""

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


@runtime_checkable
class ChannelSession(Protocol):
    """An open way into one guest. One session per target and channel is reused across
    steps; the engine closes it when the target is done.

    Every method raises :class:`beachhead.agent.errors.ChannelError` when the channel itself fails
    (connection lost) and :class:`beachhead.agent.errors.StepFailed` when the guest refuses the
    operation (no such file, permission denied).
    """

    channel: str

    async def run(self, request: CommandRequest) -> Outcome:
        """Run a command to completion and return its outcome (a non-zero exit is not an
        error here; the engine decides)."""
        ...

    async def put_file(self, local: Path, remote: str, mode: int | None) -> FileInfo:
        """Write ``local`` to ``remote``, then verify it on the guest (size and sha256)."""
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
