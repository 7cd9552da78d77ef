"""WinRS: remote shells, their commands and the commands' streams.

A shell holds the environment and working directory its Create gave; each Command
starts one process (the stand-in's Windows program runner) in its own process group,
with stdin, stdout and stderr piped. Output is kept in arrival order until a Receive
takes it; a Receive waits for output, or the command's end, or its OperationTimeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from beachhead.bootstrap.lab.windows.run import resolve
from beachhead.bootstrap.lab.windows.wsman import faults

RUNNER_MODULE = "beachhead.bootstrap.lab.windows.run"
CMD_EXE = r"C:\Windows\system32\cmd.exe"
CMD_MAX_LINE = 8191  # the longest command cmd.exe runs
CMD_TOO_LONG = "The command line is too long."
READ_BLOCK = 64 * 1024
# What a Receive answer spends on its envelope besides the streams, and on each stream
# element besides its base64 text: the budget for output keeps under MaxEnvelopeSize.
ENVELOPE_OVERHEAD = 2048
STREAM_OVERHEAD = 160
STATUS_CONTROL_C_EXIT = 0xC000013A  # what a process ended by Ctrl+C exits with
COALESCE_S = 0.2  # how long a Receive waits, once output came, for the program's end
CTRL_C_GRACE_S = 2.0  # how long a program may take to end on Ctrl+C before its tree is killed


def new_id() -> str:
    """A shell or command id as Windows writes one (upper-case uuid, no prefix)."""
    return str(uuid.uuid4()).upper()


def build_command_line(command: str, arguments: Sequence[str], skip_cmd_shell: bool) -> str:
    """The command line WinRS starts: the command (quoted when it holds a space) and the
    arguments as the client sent them, joined by spaces; run through ``cmd.exe /c``
    unless the client asked to skip the cmd shell."""
    name = command.strip()
    if " " in name and not name.startswith('"'):
        name = f'"{name}"'
    line = " ".join([name, *arguments])
    if skip_cmd_shell:
        return line
    if len(line) > CMD_MAX_LINE:
        # cmd.exe refuses the command before running anything; this cmd.exe line gives
        # exactly that answer (message on stderr, exit status 1).
        return f"{CMD_EXE} /d /c echo {CMD_TOO_LONG}>&2& exit 1"
    return f"{CMD_EXE} /c {line}"


def program_exists(command_line: str) -> bool:
    """Whether ``CreateProcess`` would find the program of ``command_line``."""
    return resolve(command_line) is not None


@dataclass
class Runner:
    """How commands are started: the python executable, the guest root, the record dir."""

    root: Path
    record: Path | None = None
    python: str = sys.executable
    status_dir: Path | None = None  # where the runner leaves each program's 32-bit exit status

    def argv(self, cwd: str, command_line: str) -> list[str]:
        """The runner's argument vector for one command."""
        args = [self.python, "-m", RUNNER_MODULE, "--root", str(self.root), "--cwd", cwd]
        if self.record is not None:
            args += ["--record", str(self.record)]
        if self.status_dir is not None:
            args += ["--status-file", str(self.status_dir / "{pid}")]
        return [*args, "--", command_line]

    def status(self, pid: int) -> int | None:
        """The whole exit status the runner ``pid`` left, if it left one (then removed)."""
        if self.status_dir is None:
            return None
        path = self.status_dir / str(pid)
        try:
            text = path.read_text().strip()
            path.unlink()
        except OSError:
            return None
        return int(text) if text.isdigit() else None


@dataclass
class Chunk:
    """Output of one stream, as read."""

    stream: str
    data: bytes


class Command:
    """One running (or finished) program of a shell."""

    def __init__(
        self, command_id: str, process: asyncio.subprocess.Process, streams: Sequence[str], runner: Runner
    ) -> None:
        self.id = command_id
        self.runner = runner
        self.process = process
        self.streams = tuple(streams)
        self.pending: list[Chunk] = []
        self.changed = asyncio.Event()
        self.exit_code: int | None = None
        self.interrupted = False
        self._readers = [
            asyncio.create_task(self._read(name, pipe))
            for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))
            if pipe is not None
        ]
        self._waiter = asyncio.create_task(self._wait())

    async def _read(self, name: str, pipe: asyncio.StreamReader) -> None:
        while block := await pipe.read(READ_BLOCK):
            if name in self.streams:
                self.pending.append(Chunk(name, block))
                self.changed.set()

    async def _wait(self) -> None:
        await asyncio.gather(*self._readers)
        code = await self.process.wait()
        whole = self.runner.status(self.process.pid)
        if whole is not None:
            code = whole
        elif self.interrupted:
            code = STATUS_CONTROL_C_EXIT
        elif code < 0:
            code = 1  # ended by a signal: TerminateProcess gives the caller's code
        self.exit_code = code
        self.changed.set()

    @property
    def done(self) -> bool:
        """Whether the process ended and all its output was read."""
        return self.exit_code is not None

    async def send(self, data: bytes, end: bool) -> None:
        """Write ``data`` to the program's stdin, closing it when ``end``."""
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            return
        try:
            if data:
                stdin.write(data)
                await stdin.drain()
            if end:
                stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            stdin.close()

    async def receive(self, timeout_s: float, budget: int, streams: Sequence[str] = ()) -> tuple[list[Chunk], bool]:
        """Output of ``streams`` (all when empty) taken, at most about ``budget``
        bytes of envelope, and whether the command is done with all that output
        delivered; raises the TimedOut fault when neither output nor the end came
        within ``timeout_s``. Output of other streams waits for a Receive asking for it."""
        wanted = set(streams or self.streams)

        def waiting() -> list[int]:
            return [index for index, chunk in enumerate(self.pending) if chunk.stream in wanted]

        deadline = time.monotonic() + timeout_s
        while not waiting() and not self.done:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise faults.timed_out()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        # Like Windows, answer a short command's output and its end together: give a
        # program that just wrote a moment to finish before answering "Running".
        settle = min(COALESCE_S, deadline - time.monotonic())
        if not self.done and settle > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._waiter), settle)
        taken: list[Chunk] = []
        whole: set[int] = set()  # indices of chunks taken whole; a split one stays, shortened
        spent = ENVELOPE_OVERHEAD
        for index in waiting():
            chunk = self.pending[index]
            room = (budget - spent - STREAM_OVERHEAD) * 3 // 4
            if room <= 0:
                break
            if len(chunk.data) > room:
                taken.append(Chunk(chunk.stream, chunk.data[:room]))
                self.pending[index] = Chunk(chunk.stream, chunk.data[room:])
                break
            taken.append(chunk)
            whole.add(index)
            spent += STREAM_OVERHEAD + (len(chunk.data) + 2) // 3 * 4
        self.pending = [chunk for index, chunk in enumerate(self.pending) if index not in whole]
        return taken, self.done and not waiting()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the program's whole process group (children that outlived
        the runner included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def close(self) -> None:
        """End the process tree and wait until it is gone."""
        self.kill()
        if self.process.stdin is not None:
            self.process.stdin.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._waiter), 10)


@dataclass
class Shell:
    """A WinRS shell: owner, working directory, environment, streams and commands."""

    id: str
    owner: str
    client_ip: str
    cwd: str
    env: dict[str, str]
    input_streams: tuple[str, ...]
    output_streams: tuple[str, ...]
    idle_timeout: str = "PT7200.000S"
    created: float = field(default_factory=time.monotonic)
    commands: dict[str, Command] = field(default_factory=dict)
    started: int = 0  # commands started: each counts as an operation until the shell goes


class ShellHost:
    """Every shell of the endpoint, and the limits Windows puts on them."""

    def __init__(
        self, runner: Runner, max_shells_per_user: int, computer_name: str, max_operations_per_user: int = 1500
    ) -> None:
        self.runner = runner
        self.max_shells_per_user = max_shells_per_user
        self.max_operations_per_user = max_operations_per_user
        self.computer_name = computer_name
        self.shells: dict[str, Shell] = {}

    def shell(self, shell_id: str | None, user: str) -> Shell:
        """The user's shell ``shell_id``, or the InvalidSelectors fault."""
        found = self.shells.get((shell_id or "").upper())
        if found is None or found.owner.lower() != user.lower():
            raise faults.unknown_shell(shell_id or "")
        return found

    def create(
        self,
        user: str,
        client_ip: str,
        cwd: str | None,
        env: Mapping[str, str],
        input_streams: Sequence[str],
        output_streams: Sequence[str],
    ) -> Shell:
        """A new shell for ``user``, or the quota fault when the user has enough."""
        owned = sum(1 for s in self.shells.values() if s.owner.lower() == user.lower())
        if owned >= self.max_shells_per_user:
            raise faults.shell_quota(self.max_shells_per_user)
        shell = Shell(
            id=new_id(),
            owner=user,
            client_ip=client_ip,
            cwd=cwd or rf"C:\Users\{user}",
            env=dict(env),
            input_streams=tuple(input_streams) or ("stdin",),
            output_streams=tuple(output_streams) or ("stdout", "stderr"),
        )
        self.shells[shell.id] = shell
        return shell

    async def start(self, shell: Shell, command_line: str, skip_cmd_shell: bool) -> Command:
        """Start ``command_line`` in ``shell``."""
        # Windows counts a command as an operation until its shell is deleted, even
        # after Signal terminate (pywinrm issue #124: long-lived shells hit the quota).
        operations = sum(s.started for s in self.shells.values() if s.owner.lower() == shell.owner.lower())
        if operations >= self.max_operations_per_user:
            raise faults.operations_quota(self.max_operations_per_user)
        if skip_cmd_shell and not program_exists(command_line):
            raise faults.file_not_found()
        env = {"USER": shell.owner, "HOSTNAME": self.computer_name, **shell.env}
        if "PATH" in os.environ:
            env.setdefault("PATH", os.environ["PATH"])
        process = await asyncio.create_subprocess_exec(
            *self.runner.argv(shell.cwd, command_line),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: Signal ends the whole tree
        )
        command = Command(new_id(), process, shell.output_streams, self.runner)
        shell.commands[command.id] = command
        shell.started += 1
        return command

    @staticmethod
    def command(shell: Shell, command_id: str | None) -> Command:
        """The shell's command ``command_id``, or the InvalidSelectors fault."""
        found = shell.commands.get((command_id or "").upper())
        if found is None:
            raise faults.unknown_command()
        return found

    async def signal(self, shell: Shell, command: Command, code: str) -> None:
        """Deliver a WinRS signal: ``terminate`` ends the command's tree and forgets
        the command; ``ctrl_c`` interrupts it (its tree ends, Receive reports the exit)."""
        if code.endswith("/signal/ctrl_c"):
            if not command.done:
                command.interrupted = True
                command.kill(signal.SIGINT)
                asyncio.get_running_loop().call_later(CTRL_C_GRACE_S, command.kill)
            return
        shell.commands.pop(command.id, None)
        await command.close()

    async def delete(self, shell: Shell) -> None:
        """Close the shell and end whatever still runs in it."""
        self.shells.pop(shell.id, None)
        await asyncio.gather(*(c.close() for c in shell.commands.values()))
        shell.commands.clear()

    async def close(self) -> None:
        """End every command of every shell (at shutdown)."""
        for shell in list(self.shells.values()):
            await self.delete(shell)


def encode(data: bytes) -> str:
    """Base64 text of a stream chunk."""
    return base64.b64encode(data).decode("ascii")


def decode(text: str | None) -> bytes:
    """The bytes of a base64 stream element (empty when it has no text)."""
    return base64.b64decode((text or "").strip()) if text and text.strip() else b""
