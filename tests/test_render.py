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
    assert _sh(request.command, request.stdin) == f"{AWKWARD}|x"
    assert request.env_names == ("A",) and AWKWARD not in request.description


def test_posix_script_goes_over_stdin(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text('echo "$0 sees $B"\n')
    request = render(RunSpec(script=script, shell="bash", env={"B": "b"}), OsFamily.LINUX)
    assert request.stdin is not None and request.stdin.endswith(script.read_bytes())
    assert request.command.endswith("exec bash -s'")
    assert _sh(request.command, request.stdin) == "bash sees b\n"


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_posix_env_values_travel_on_stdin_never_on_the_command_line(shell: str) -> None:
    values = {"A": AWKWARD, "TRAILING": "two newlines\n\n", "EMPTY": "", "UNI": "ünïcode ✓", "LONG": "x" * 10_000}
    command = 'for v in "$A" "$TRAILING" "$EMPTY" "$UNI" "$LONG"; do printf "[%s]" "$v"; done; cat'
    request = render(RunSpec(command=command, shell=shell, env=values), OsFamily.LINUX)
    for value in values.values():
        if value:
            assert value not in request.command
            assert base64.b64encode(value.encode()).decode() not in request.command
    # The rest of stdin after the environment lines reaches the command untouched.
    printed = _sh(request.command, (request.stdin or b"") + b"rest of stdin\n")
    assert printed == "".join(f"[{value}]" for value in values.values()) + "rest of stdin\n"


def test_posix_env_names_must_be_identifiers() -> None:
    with pytest.raises(InputError) as caught:
        render(RunSpec(command="true", env={"A; touch /tmp/x": "v"}), OsFamily.LINUX)
    assert caught.value.where == "run.env.A; touch /tmp/x"


def test_posix_env_missing_from_stdin_fails_instead_of_running_without_it() -> None:
    request = render(RunSpec(command="echo ran", env={"A": "a", "B": "b"}), OsFamily.LINUX)
    first_line_only = (request.stdin or b"").split(b"\n")[0]  # B's line is missing
    done = subprocess.run(["sh", "-c", request.command], input=first_line_only, capture_output=True, check=False)
    assert done.returncode == 125 and done.stdout == b""
    assert b"cannot read the environment" in done.stderr


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
        (RunSpec(command="echo %A%", shell="cmd", env={"A": "two\nlines"}), OsFamily.WINDOWS, "run.env.A"),
    ],
)
def test_shell_foreign_to_the_os_is_bad_input(spec: RunSpec, family: OsFamily, field: str) -> None:
    with pytest.raises(InputError) as caught:
        render(spec, family)
    assert caught.value.where == field
