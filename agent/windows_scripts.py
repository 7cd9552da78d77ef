"""How a run step's script reaches a Windows guest, whatever the channel: never on a
command line, where the guest's process list (and cmd.exe's 8,191-character limit)
would see it.

- PowerShell: :data:`POWERSHELL`, a fixed ``-EncodedCommand`` bootstrap that reads the
  script from stdin (base64 of UTF-8, so no console code page can alter it) and runs it
  as a script block; :func:`powershell_stdin` is that stdin, with the step's
  environment values first when the channel cannot set them otherwise.
- cmd: cmd.exe reads a script from stdin as typed lines (no labels, no ``goto``, ``%%``
  and echo as at a prompt), so a script, a command of several lines, or one that needs
  environment values the channel cannot set otherwise, runs as a batch file:
  :func:`batch_file` is its text, the values set by ``@set`` lines first, each of them
  seen by every line after it. A one-line command with nothing else runs as it is.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from beachhead.agent.channel import ShellScript

# ``exit N`` in the script sets the exit status, otherwise it is the last native
# command's, or 1 after an error nothing caught. Written for Windows PowerShell 5.1; it
# has never run on Windows here.
POWERSHELL_BOOTSTRAP = """\
$ProgressPreference = 'SilentlyContinue'
$beachheadText = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String([Console]::In.ReadToEnd()))
$global:LASTEXITCODE = 0
try {
    & ([ScriptBlock]::Create($beachheadText))
} catch {
    $Host.UI.WriteErrorLine(($_ | Out-String))
    exit 1
}
if ($global:LASTEXITCODE) { exit $global:LASTEXITCODE }
if (-not $?) { exit 1 }
exit 0
"""
POWERSHELL = "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand " + (
    base64.b64encode(POWERSHELL_BOOTSTRAP.encode("utf-16-le")).decode("ascii")
)
# cmd.exe refuses command lines longer than 8,191 characters; a one-line command longer
# than this (with what a channel wraps around it) goes through a batch file instead.
INLINE_LIMIT = 8000


def powershell_literal(value: str) -> str:
    """``value`` as a single-quoted PowerShell string."""
    return "'" + value.replace("'", "''") + "'"


def powershell_stdin(script: ShellScript, env: Mapping[str, str] | None = None) -> bytes:
    """What :data:`POWERSHELL` reads: the script, after ``$env:NAME = 'value'`` lines for
    ``env``, as base64 lines."""
    assignments = "".join(f"$env:{name} = {powershell_literal(value)}\n" for name, value in (env or {}).items())
    return base64.encodebytes((assignments + script.text).encode("utf-8"))


def inline_cmd(script: ShellScript) -> str | None:
    """The one-line command to run as it is, or None when it needs a batch file (a
    script, several lines, a line too long for cmd.exe)."""
    line = script.text.strip()
    if script.is_script or "\n" in line or "\r" in line or len(line) >= INLINE_LIMIT:
        return None
    return line


def batch_file(script: ShellScript, env: Mapping[str, str] | None = None) -> bytes:
    """A batch file running ``script`` (CRLF line ends, UTF-8), after ``@set`` lines for
    ``env`` (a ``%`` in a value doubled, so the batch file keeps it; values with line
    breaks are refused when the step is rendered, as cmd.exe cannot set one)."""
    lines = [f'@set "{name}={value.replace("%", "%%")}"' for name, value in (env or {}).items()]
    body = script.text.replace("\r\n", "\n").split("\n")
    if not script.is_script:  # commands show their output, not themselves, as inline ones do
        body = [line if not line.strip() or line.lstrip().startswith("@") else "@" + line for line in body]
    lines += body
    return ("\r\n".join(lines).rstrip("\r\n") + "\r\n").encode("utf-8")
