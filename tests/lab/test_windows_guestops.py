"""win-01, the Windows stand-in, through Beachhead's guestops channel (``beachhead run``
with a plan, as users drive it) and through plain pyvmomi: cmd.exe commands, files,
exit status and output, commands cut short, programs the guest lacks."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from beachhead.agent.windows_scripts import POWERSHELL_BOOTSTRAP
from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import BEACHHEAD, beachhead, processes_mentioning, write_plan
from tests.lab.conftest import Vc, wait_for

GUESTS = lab_dir() / "guests"
Spec = vim.vm.guest.ProcessManager.ProgramSpec


def _results(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_cmd_commands_and_files_through_guestops(
    tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    (tmp_path / "app.conf").write_bytes(b"listen 8080\r\n")
    plan = write_plan(
        tmp_path,
        r"""
        name: windows-guestops
        channels: [guestops]
        wait: [guestops_ready]
        steps:
          - run: {command: "echo out-%COMPUTERNAME% && echo err 1>&2 && hostname", shell: cmd}
          - upload: {src: app.conf, dest: 'C:\Users\Administrator\gops\app.conf'}
          - run: {command: 'findstr listen C:\Users\Administrator\gops\APP.CONF | findstr 8080', shell: cmd}
          - run: {command: 'certutil -hashfile C:\Users\Administrator\gops\app.conf SHA256', shell: cmd}
          - download: {src: 'C:\Users\Administrator\gops\app.conf', dest: "TMP/back.conf"}
          - run: {command: "type nosuch.txt || exit /b 3", shell: cmd}
          - run: {command: "nosuch-program", shell: cmd}
        """.replace("TMP", str(tmp_path)),
    )
    done = beachhead("run", str(plan), "--target", vsphere_uri("win-01", os="windows"), "--json", timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    [result] = _results(done)
    assert result["channel"] == "guestops"
    first, upload, search, digest, download, failed = result["steps"][1:7]
    assert (first["exit_code"], _lines(first["stdout"]), _lines(first["stderr"])) == (
        0,
        ["out-WIN-01", "win-01"],
        ["err"],
    )
    assert upload["status"] == "ok" and download["status"] == "ok"
    assert (GUESTS / "win-01/C/Users/Administrator/gops/app.conf").read_bytes() == b"listen 8080\r\n"
    assert (tmp_path / "back.conf").read_bytes() == b"listen 8080\r\n"
    assert _lines(search["stdout"]) == ["listen 8080"]
    assert hashlib.sha256(b"listen 8080\r\n").hexdigest() in digest["stdout"]
    assert (failed["status"], failed["exit_code"]) == ("failed", 3)
    assert _lines(failed["stderr"]) == ["The system cannot find the file specified."]
    assert result["steps"][7]["status"] == "skipped"  # after the failed step


@pytest.mark.parametrize("cut", ["timeout", "ctrl-c"])
def test_a_windows_command_cut_short_leaves_none_of_its_processes(
    cut: str, tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    """A timeout or Ctrl-C ends the whole tree (taskkill /T /F in the guest): the
    outer cmd.exe, the inner one, and the program they wait for."""
    seconds = 300 + (1 if cut == "timeout" else 2)
    marker = f"timeout /t {seconds} /nobreak"
    timeout = ", timeout: 6" if cut == "timeout" else ""
    plan = write_plan(
        tmp_path,
        f"""
        name: tree
        channels: [guestops]
        steps:
          - run: {{command: "{marker} & echo after", shell: cmd{timeout}}}
        """,
    )
    run = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), "--target", vsphere_uri("win-01", os="windows"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(processes_mentioning(marker)) >= 3, timeout=60, what="the command's programs run")
        if cut == "ctrl-c":
            run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == (130 if cut == "ctrl-c" else 1), stderr[-3000:]
    try:
        wait_for(lambda: not processes_mentioning(marker), timeout=10, what="the command's processes are gone")
    finally:
        for pid in processes_mentioning(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _finished(vc: Vc, vm: vim.VirtualMachine, pid: int) -> vim.vm.guest.ProcessManager.ProcessInfo:
    def ended() -> vim.vm.guest.ProcessManager.ProcessInfo | None:
        (info,) = vc.processes.ListProcessesInGuest(vm, vc.auth("win-01"), [pid])
        return info if info.endTime else None

    return wait_for(ended, what=f"pid {pid} finished")


def test_start_program_runs_windows_programs_only(vc: Vc) -> None:
    vm = vc.vm("win-01")
    wait_for(lambda: vm.guest.guestOperationsReady, what="win-01 guest operations ready")
    auth = vc.auth("win-01")
    cmd = r"C:\Windows\System32\cmd.exe"
    pid = vc.processes.StartProgramInGuest(vm, auth, Spec(programPath=cmd, arguments="/c nosuch"))
    info = _finished(vc, vm, pid)
    assert info.exitCode == 9009 and info.cmdLine == f'"{cmd}" /c nosuch'
    with pytest.raises(vim.fault.FileNotFound):
        vc.processes.StartProgramInGuest(vm, auth, Spec(programPath="powershell.exe", arguments="-Command Get-Date"))
    with pytest.raises(vim.fault.FileNotFound):
        vc.processes.StartProgramInGuest(vm, auth, Spec(programPath="/bin/sh", arguments="-c true"))
    # What the guest lacks and was asked through cmd.exe is recorded in its tools folder.
    pid = vc.processes.StartProgramInGuest(
        vm, auth, Spec(programPath=cmd, arguments='/d /s /c "powershell.exe -NoProfile -Command Get-Date"')
    )
    assert _finished(vc, vm, pid).exitCode == 9009
    record = GUESTS / "win-01.tools/windows/powershell.jsonl"
    assert json.loads(record.read_text().splitlines()[-1])["script"] == "Get-Date"
    values = vc.processes.ReadEnvironmentVariableInGuest(vm, auth, ["USERPROFILE", "COMPUTERNAME"])
    assert sorted(values) == ["COMPUTERNAME=WIN-01", r"USERPROFILE=C:\Users\Administrator"]
    # The runner's processes show as the Windows programs they run, with their pids.
    pid = vc.processes.StartProgramInGuest(vm, auth, Spec(programPath=cmd, arguments="/c timeout /t 60 /nobreak"))
    try:
        listed = wait_for(
            lambda: [p for p in vc.processes.ListProcessesInGuest(vm, auth) if p.name == "timeout.exe"],
            what="timeout.exe listed",
        )
        assert listed[0].cmdLine == "timeout /t 60 /nobreak"
    finally:
        vc.processes.TerminateProcessInGuest(vm, auth, listed[0].pid)
        # cmd.exe may end on its own once its child is gone, before it is terminated.
        with contextlib.suppress(vim.fault.GuestProcessNotFound):
            vc.processes.TerminateProcessInGuest(vm, auth, pid)
    assert _finished(vc, vm, pid).exitCode is not None


def test_a_missing_program_fails_as_windows_says(
    tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    plan = write_plan(
        tmp_path, "name: missing\nchannels: [guestops]\nsteps:\n  - run: {command: nosuch-program, shell: cmd}\n"
    )
    done = beachhead("run", str(plan), "--target", vsphere_uri("win-01", os="windows"), "--json", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    [result] = _results(done)
    step = result["steps"][-1]
    assert (step["status"], step["exit_code"]) == ("failed", 9009)
    assert "'nosuch-program' is not recognized as an internal or external command," in step["stderr"]


def test_env_values_and_scripts_never_reach_a_command_line(
    tmp_path: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    secret = "s3cr%et-" + os.urandom(6).hex()
    (tmp_path / "job.cmd").write_text("@echo off\necho job sees %APP_TOKEN%\nexit /b 0\n")
    plan = write_plan(
        tmp_path,
        f"""
        name: windows-env
        channels: [guestops]
        wait: [guestops_ready]
        steps:
          - run: {{command: "echo %APP_TOKEN:~0,6%", shell: cmd, env: {{APP_TOKEN: "{secret}"}}}}
          - run: {{script: job.cmd, shell: cmd, env: {{APP_TOKEN: "{secret}"}}}}
          - run: {{command: "Write-Output $env:APP_TOKEN", env: {{APP_TOKEN: "{secret}"}}}}
        """,
    )
    wire = tmp_path / "wire.jsonl"
    uri = vsphere_uri("win-01", os="windows")
    done = beachhead("run", str(plan), "--target", uri, "--json", "--wire-log", str(wire), timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr  # PowerShell: not in the lab
    [result] = _results(done)
    inline, script, powershell = result["steps"][1:4]
    # The value is set before the line that uses it is read (a batch file's first line);
    # output shows it masked, so the command prints a part of it.
    assert (inline["exit_code"], inline["stdout"].strip()) == (0, secret[:6])
    assert (script["exit_code"], script["stdout"].strip()) == (0, "job sees ***")
    assert powershell["exit_code"] == 9009
    # PowerShell got the fixed bootstrap on its command line; the script came on stdin.
    record = GUESTS / "win-01.tools/windows/powershell.jsonl"
    assert json.loads(record.read_text().splitlines()[-1])["script"] == POWERSHELL_BOOTSTRAP
    vm = vc.vm("win-01")
    lines = [p.cmdLine or "" for p in vc.processes.ListProcessesInGuest(vm, vc.auth("win-01"))]
    encoded = base64.b64encode(secret.encode("utf-16-le")).decode()[:12]
    assert lines and not [line for line in lines if secret in line or encoded in line]
    assert secret not in wire.read_text() and encoded not in wire.read_text()
    assert not list((GUESTS / "win-01/C/Windows/Temp").glob("beachhead-*"))
