"""Rendering run steps per OS family. POSIX renderings are executed by a real /bin/sh."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from beachhead.agent.errors import InputError
from beachhead.agent.render import RunSpec, render
from beachhead.agent.targets import OsFamily

AWKWARD = 'it\'s "quoted" $HOME `x` \\ ; | & done'


def _sh(command: str, stdin: bytes | None = None) -> str:
    return subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, check=True).stdout.decode()


def test_posix_command_and_env_survive_quoting() -> None:
    request = render(RunSpec(command='printf "%s|%s" "$A" "$1x"', env={"A": AWKWARD}), OsFamily.LINUX)
    assert _sh(request.command) == f"{AWKWARD}|x"
    assert request.env_names == ("A",) and AWKWARD not in request.description


def test_posix_script_goes_over_stdin(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text('echo "$0 sees $B"\n')
    request = render(RunSpec(script=script, shell="bash", env={"B": "b"}), OsFamily.LINUX)
    assert request.stdin == script.read_bytes() and request.command.endswith("bash -s")
    assert _sh(request.command, request.stdin) == "bash sees b\n"


def test_powershell_is_encoded_utf16() -> None:
    request = render(RunSpec(command="Write-Output $env:NAME", env={"NAME": "O'Neil"}), OsFamily.WINDOWS)
    prefix = "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "
    assert request.command.startswith(prefix)
    decoded = base64.b64decode(request.command[len(prefix) :]).decode("utf-16-le")
    assert decoded.endswith("$env:NAME = 'O''Neil'; Write-Output $env:NAME")


def test_cmd_rendering() -> None:
    request = render(RunSpec(command="echo %X%\nver", shell="cmd", env={"X": "1"}), OsFamily.WINDOWS)
    assert request.command == 'cmd.exe /d /c set "X=1"&& echo %X% && ver'


@pytest.mark.parametrize(
    ("spec", "family", "field"),
    [
        (RunSpec(command="ls", shell="powershell"), OsFamily.LINUX, "run.shell"),
        (RunSpec(command="dir", shell="bash"), OsFamily.WINDOWS, "run.shell"),
        (RunSpec(command="dir", become=True), OsFamily.WINDOWS, "run.become"),
    ],
)
def test_shell_foreign_to_the_os_is_bad_input(spec: RunSpec, family: OsFamily, field: str) -> None:
    with pytest.raises(InputError) as caught:
        render(spec, family)
    assert caught.value.where == field
