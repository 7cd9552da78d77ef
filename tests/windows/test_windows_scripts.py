"""How run steps' scripts reach a Windows guest (beachhead.agent.windows_scripts): the
batch files it writes, run by the lab stand-in's cmd.exe, and the PowerShell stdin."""

from __future__ import annotations

import base64
from pathlib import Path

from beachhead.agent.channel import ShellScript
from beachhead.agent.windows_scripts import POWERSHELL, batch_file, inline_cmd, powershell_stdin
from tests.windows.test_programs import root, win

__all__ = ["root"]


def _run_batch(root: Path, text: bytes) -> tuple[int, bytes]:
    (root / "C/Windows/Temp/job.cmd").write_bytes(text)
    done = win(root, r'cmd.exe /d /s /c ""C:\Windows\Temp\job.cmd""')
    return done.status, done.stdout


def test_a_command_with_values_runs_as_a_quiet_batch_file(root: Path) -> None:
    command = ShellScript("cmd", "echo %A% & echo %B%\necho 100%%\n")
    # Expanded before the line is parsed, as cmd.exe does: a value's & would split it.
    text = batch_file(command, {"A": 'percent % and "quotes"', "B": "second"})
    assert text.endswith(b"\r\n") and b"\n" not in text.replace(b"\r\n", b"")
    status, stdout = _run_batch(root, text)
    assert (status, stdout) == (0, b'percent % and "quotes" \r\nsecond\r\n100%\r\n')


def test_a_script_is_echoed_as_a_batch_file_is(root: Path) -> None:
    script = ShellScript("cmd", "echo one\n@echo two\nexit /b 5\n", is_script=True)
    status, stdout = _run_batch(root, batch_file(script))
    assert status == 5
    prompt = b"\r\nC:\\Users\\Administrator>"
    assert stdout == prompt + b"echo one\r\none\r\ntwo\r\n" + prompt + b"exit /b 5\r\n"


def test_only_a_plain_one_line_command_runs_inline() -> None:
    assert inline_cmd(ShellScript("cmd", "  echo hi  \n")) == "echo hi"
    assert inline_cmd(ShellScript("cmd", "echo a\necho b")) is None
    assert inline_cmd(ShellScript("cmd", "echo hi", is_script=True)) is None
    assert inline_cmd(ShellScript("cmd", "echo " + "x" * 8000)) is None


def test_powershell_stdin_carries_values_and_script_not_the_command_line() -> None:
    stdin = powershell_stdin(ShellScript("powershell", "Write-Output $env:A\n"), {"A": "it's"})
    assert base64.b64decode(stdin).decode() == "$env:A = 'it''s'\nWrite-Output $env:A\n"
    assert "it''s" not in POWERSHELL and len(POWERSHELL) < 2000
