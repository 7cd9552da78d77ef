"""Renders a plan's run step into the command line a guest's OS expects.

Scripts are data: the same :class:`RunSpec` becomes a POSIX shell invocation on Linux
and a PowerShell or cmd invocation on Windows. Environment values travel with the
command, not through the channel's own environment support, so they reach the guest
whatever its server accepts; only their names are ever journaled.

On Linux the values never appear on a command line (where any user of the guest could
read them in its process list, and sudo would log them): they lead the command's stdin,
one base64 line per variable, which a ``sh -c`` preamble reads with the ``read``
builtin (it never reads past a newline from a pipe), decodes with ``base64 -d`` and
exports before it ``exec``s the command's shell on the rest of stdin (a script, or
nothing). Over ``sudo -S`` the password line comes first and sudo consumes it. On
Windows (PowerShell, cmd) they are part of the rendered command line, but the request
also carries the step unrendered (:class:`~beachhead.agent.channel.ShellScript`), and
the Windows channels run that instead (:mod:`beachhead.agent.windows_scripts`): the
script over stdin or in a batch file, the values in the WinRS shell's environment
(``winrm``) or leading the script (``guestops``), never on a command line.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from beachhead.agent.channel import CommandRequest, ShellScript
from beachhead.agent.errors import InputError
from beachhead.agent.targets import OsFamily
from beachhead.agent.windows_scripts import powershell_literal

POSIX_SHELLS = ("sh", "bash")
ENV_READ_FAILED = 125  # the exit status when the environment lines could not be read
# Reads one base64 line per variable named after ``for``; ``printf x`` keeps the
# trailing newlines of a value that command substitution would strip.
_READ_ENV = (
    "for __beachhead_name in {names}; do"
    " IFS= read -r __beachhead_value"
    ' && __beachhead_value=$(printf %s "$__beachhead_value" | base64 -d && printf x)'
    ' || {{ echo "beachhead: cannot read the environment from stdin" >&2; exit {status}; }};'
    ' export "$__beachhead_name=${{__beachhead_value%x}}";'
    " done; unset __beachhead_name __beachhead_value; "
)
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
    for name in spec.env:
        if not name.isidentifier() or not name.isascii():
            raise InputError(None, f"run.env.{name}", "names must be identifiers")
    if spec.script is not None:
        # The script travels on stdin: nothing is left behind in the guest.
        command = f"{shell} -s"
        stdin: bytes | None = body.encode()
    else:
        command = f"{shell} -c {shlex.quote(body)}"
        stdin = None
    if spec.env:
        lines = b"".join(base64.b64encode(value.encode()) + b"\n" for value in spec.env.values())
        preamble = _READ_ENV.format(names=" ".join(spec.env), status=ENV_READ_FAILED)
        command = f"sh -c {shlex.quote(preamble + 'exec ' + command)}"
        stdin = lines + (stdin or b"")
    return CommandRequest(
        command=command,
        description=spec.describe(),
        stdin=stdin,
        become=spec.become,
        env_names=tuple(spec.env),
    )


def _render_windows(spec: RunSpec, body: str) -> CommandRequest:
    shell = spec.shell or "powershell"
    if shell not in WINDOWS_SHELLS:
        raise InputError(None, "run.shell", f"{shell} is not available on Windows guests (use powershell or cmd)")
    if spec.become:
        raise InputError(None, "run.become", "become is not supported on Windows guests; connect as an administrator")
    if shell == "powershell":
        env = "".join(f"$env:{name} = {powershell_literal(value)}; " for name, value in spec.env.items())
        script = f"$ProgressPreference = 'SilentlyContinue'; {env}{body}"
        encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
        command = f"powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encoded}"
    else:
        for name, value in spec.env.items():
            if "\n" in value or "\r" in value:
                raise InputError(None, f"run.env.{name}", "cmd.exe cannot set a value with a line break")
        env = "".join(f'set "{name}={value}"&& ' for name, value in spec.env.items())
        lines = [line for line in body.splitlines() if line.strip()]
        command = f"cmd.exe /d /c {env}" + " && ".join(lines)
    return CommandRequest(
        command=command,
        description=spec.describe(),
        env_names=tuple(spec.env),
        script=ShellScript(shell, body, is_script=spec.script is not None, env=dict(spec.env)),
    )
