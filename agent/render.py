"""Renders a plan's run step into the command line a guest's OS expects.

Scripts are data: the same :class:`RunSpec` becomes a POSIX shell invocation on Linux
and a PowerShell or cmd invocation on Windows. Environment values are passed inside the
command (not through the channel) so they reach the guest whatever its server accepts;
only their names are ever journaled.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from beachhead.agent.channel import CommandRequest
from beachhead.agent.errors import InputError
from beachhead.agent.targets import OsFamily

POSIX_SHELLS = ("sh", "bash")
WINDOWS_SHELLS = ("powershell", "cmd")
SHELLS = (*POSIX_SHELLS, *WINDOWS_SHELLS)


@dataclass(frozen=True)
class RunSpec:
    """A command or script to run, before rendering for the guest's OS family."""

    command: str | None = None
    script: Path | None = None
    shell: str | None = None
    become: bool = False
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """Short human description: the command's first line or the script's name."""
        if self.script is not None:
            return f"script {self.script.name}"
        first = (self.command or "").strip().splitlines()[0] if self.command else ""
        return first if len(first) <= 60 else first[:57] + "..."


def render(spec: RunSpec, os_family: OsFamily) -> CommandRequest:
    """Render ``spec`` for ``os_family``; a shell foreign to that family is bad input."""
    body = spec.script.read_text(encoding="utf-8") if spec.script else spec.command or ""
    if os_family is OsFamily.WINDOWS:
        return _render_windows(spec, body)
    return _render_posix(spec, body)


def _render_posix(spec: RunSpec, body: str) -> CommandRequest:
    shell = spec.shell or "sh"
    if shell not in POSIX_SHELLS:
        raise InputError(None, "run.shell", f"{shell} is not available on Linux guests (use sh or bash)")
    env = " ".join(f"{name}={shlex.quote(value)}" for name, value in spec.env.items())
    prefix = f"env {env} " if env else ""
    if spec.script is not None:
        # The script travels on stdin: nothing is left behind in the guest.
        command = f"{prefix}{shell} -s"
        stdin: bytes | None = body.encode()
    else:
        command = f"{prefix}{shell} -c {shlex.quote(body)}"
        stdin = None
    return CommandRequest(
        command=command,
        description=spec.describe(),
        stdin=stdin,
        become=spec.become,
        env_names=tuple(spec.env),
    )


def _powershell_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _render_windows(spec: RunSpec, body: str) -> CommandRequest:
    shell = spec.shell or "powershell"
    if shell not in WINDOWS_SHELLS:
        raise InputError(None, "run.shell", f"{shell} is not available on Windows guests (use powershell or cmd)")
    if spec.become:
        raise InputError(None, "run.become", "become is not supported on Windows guests; connect as an administrator")
    if shell == "powershell":
        env = "".join(f"$env:{name} = {_powershell_literal(value)}; " for name, value in spec.env.items())
        script = f"$ProgressPreference = 'SilentlyContinue'; {env}{body}"
        encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
        command = f"powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encoded}"
    else:
        env = "".join(f'set "{name}={value}"&& ' for name, value in spec.env.items())
        lines = [line for line in body.splitlines() if line.strip()]
        command = f"cmd.exe /d /c {env}" + " && ".join(lines)
    return CommandRequest(command=command, description=spec.describe(), env_names=tuple(spec.env))
