"""Guest operations through plain pyvmomi: programs, environment, files and the
faults vSphere gives."""

from __future__ import annotations

import hashlib
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyVmomi import vim

from tests.lab.conftest import Vc, wait_for

Spec = vim.vm.guest.ProcessManager.ProgramSpec


def _ready(vc: Vc, name: str) -> vim.VirtualMachine:
    vm = vc.vm(name)
    wait_for(lambda: vm.guest.guestOperationsReady, what=f"{name} guest operations ready")
    return vm


def _finished(vc: Vc, vm: vim.VirtualMachine, name: str, pid: int) -> vim.vm.guest.ProcessManager.ProcessInfo:
    def ended() -> vim.vm.guest.ProcessManager.ProcessInfo | None:
        (info,) = vc.processes.ListProcessesInGuest(vm, vc.auth(name), [pid])
        return info if info.endTime else None

    return wait_for(ended, what=f"pid {pid} finished")


def _put(vc: Vc, url: str, data: bytes) -> None:
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, context=vc.ssl_context, timeout=10) as response:
        assert response.status == 200


def _get(vc: Vc, url: str) -> bytes:
    with urllib.request.urlopen(url, context=vc.ssl_context, timeout=10) as response:
        data: bytes = response.read()
        return data


def test_program_runs_in_the_guest_with_directory_and_environment(vc: Vc) -> None:
    vm = _ready(vc, "lin-01")
    auth = vc.auth("lin-01")
    vc.files.MakeDirectoryInGuest(vm, auth, "/root/work/sub", createParentDirectories=True)
    pid = vc.processes.StartProgramInGuest(
        vm,
        auth,
        Spec(
            programPath="/bin/sh",
            arguments="-c 'echo \"$GREETING from $(hostname) in $(pwd)\" > out.txt; exit 7'",
            workingDirectory="/root/work/sub",
            envVariables=["GREETING=hello"],
        ),
    )
    info = _finished(vc, vm, "lin-01", pid)
    assert (info.exitCode, info.owner, info.name) == (7, "root", "/bin/sh")
    assert info.endTime >= info.startTime
    transfer = vc.files.InitiateFileTransferFromGuest(vm, auth, "/root/work/sub/out.txt")
    assert _get(vc, transfer.url) == b"hello from lin-01 in /root/work/sub\n"
    assert transfer.size == len(b"hello from lin-01 in /root/work/sub\n")
    assert not os.path.exists("/root/work/sub/out.txt")  # the guest's /root is not the host's


def test_processes_are_listed_and_terminated(vc: Vc) -> None:
    vm = _ready(vc, "lin-01")
    auth = vc.auth("lin-01")
    pid = vc.processes.StartProgramInGuest(vm, auth, Spec(programPath="/bin/sleep", arguments="600"))
    listed = {p.pid: p for p in vc.processes.ListProcessesInGuest(vm, auth)}
    assert pid in listed and listed[pid].endTime is None
    assert any(p.name == "sshd" for p in listed.values())  # the guest's own processes too
    vc.processes.TerminateProcessInGuest(vm, auth, pid)
    info = _finished(vc, vm, "lin-01", pid)
    assert info.exitCode == 128 + 15  # SIGTERM
    with pytest.raises(vim.fault.GuestProcessNotFound):
        vc.processes.TerminateProcessInGuest(vm, auth, os.getpid())  # a host process, not the guest's


def test_terminate_ends_only_the_given_process_as_vmware_tools_does(vc: Vc) -> None:
    """SIGTERM, SIGKILL when that is ignored, and the answer once the process is gone;
    its children live on. The program leads no process group, as under vmtoolsd."""
    vm = _ready(vc, "lin-01")
    auth = vc.auth("lin-01")
    script = 'trap "" TERM; sleep 600 & echo $! > /root/term-child; wait'
    pid = vc.processes.StartProgramInGuest(vm, auth, Spec(programPath="/bin/sh", arguments=f"-c '{script}'"))
    child_file = "/root/term-child"
    wait_for(lambda: vc.files.ListFilesInGuest(vm, auth, "/root", matchPattern="term-child").files, what="child")
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # the lab shares the host's pids
    assert int(stat[2]) != pid  # its process group is its waiter's
    vc.processes.TerminateProcessInGuest(vm, auth, pid)
    assert not os.path.exists(f"/proc/{pid}")  # gone when the call answers
    assert _finished(vc, vm, "lin-01", pid).exitCode == 128 + 9  # TERM was ignored
    transfer = vc.files.InitiateFileTransferFromGuest(vm, auth, child_file)
    child = int(_get(vc, transfer.url))
    try:
        assert os.path.exists(f"/proc/{child}")  # only the given pid was signalled
    finally:
        os.kill(child, 9)


def test_non_root_login_runs_as_that_user(vc: Vc) -> None:
    vm = _ready(vc, "lin-03")
    auth = vc.auth("lin-03")
    pid = vc.processes.StartProgramInGuest(
        vm, auth, Spec(programPath="/bin/sh", arguments="-c 'id -un > \"$HOME/who\"'")
    )
    assert _finished(vc, vm, "lin-03", pid).exitCode == 0
    transfer = vc.files.InitiateFileTransferFromGuest(vm, auth, "/home/admin/who")
    assert _get(vc, transfer.url) == b"admin\n"


def test_read_environment_variables(vc: Vc) -> None:
    vm = _ready(vc, "lin-01")
    values = vc.processes.ReadEnvironmentVariableInGuest(vm, vc.auth("lin-01"), ["HOME", "PATH"])
    assert "HOME=/root" in values and any(v.startswith("PATH=/") for v in values)
    assert len(vc.processes.ReadEnvironmentVariableInGuest(vm, vc.auth("lin-01"))) > 2


def test_file_transfer_round_trip_list_temp_and_delete(vc: Vc) -> None:
    vm = _ready(vc, "lin-01")
    auth = vc.auth("lin-01")
    payload = os.urandom(300_000)
    attributes = vim.vm.guest.FileManager.PosixFileAttributes(permissions=0o750)
    url = vc.files.InitiateFileTransferToGuest(vm, auth, "/tmp/payload.bin", attributes, len(payload), True)
    _put(vc, url, payload)
    with pytest.raises(urllib.error.URLError):  # a transfer URL works once (404, or reset mid-body)
        _put(vc, url, payload)

    listing = vc.files.ListFilesInGuest(vm, auth, "/tmp", matchPattern=r"^payload\.bin$")
    (entry,) = listing.files
    assert (entry.path, entry.type, entry.size, entry.attributes.permissions & 0o777) == (
        "payload.bin",
        "file",
        len(payload),
        0o750,
    )
    back = vc.files.InitiateFileTransferFromGuest(vm, auth, "/tmp/payload.bin")
    assert hashlib.sha256(_get(vc, back.url)).digest() == hashlib.sha256(payload).digest()

    with pytest.raises(vim.fault.FileAlreadyExists):
        vc.files.InitiateFileTransferToGuest(vm, auth, "/tmp/payload.bin", attributes, 1, False)

    temp = vc.files.CreateTemporaryFileInGuest(vm, auth, "bh-", ".tmp", "/tmp")
    assert temp.startswith("/tmp/bh-") and temp.endswith(".tmp")
    page = vc.files.ListFilesInGuest(vm, auth, "/tmp", index=0, maxResults=1)
    assert len(page.files) == 1 and page.remaining >= 3  # ., .., payload.bin, the temp file

    vc.files.DeleteFileInGuest(vm, auth, "/tmp/payload.bin")
    vc.files.DeleteFileInGuest(vm, auth, temp)
    with pytest.raises(vim.fault.FileNotFound):
        vc.files.DeleteFileInGuest(vm, auth, "/tmp/payload.bin")
    with pytest.raises(vim.fault.NotAFile):
        vc.files.DeleteFileInGuest(vm, auth, "/tmp")


def test_faults(vc: Vc) -> None:
    vm = _ready(vc, "lin-01")
    with pytest.raises(vim.fault.InvalidGuestLogin):
        vc.processes.ListProcessesInGuest(vm, vc.auth("lin-01", password="wrong"))
    with pytest.raises(vim.fault.FileNotFound):
        vc.files.ListFilesInGuest(vm, vc.auth("lin-01"), "/no/such/dir")
    with pytest.raises(vim.fault.FileNotFound):
        vc.files.InitiateFileTransferFromGuest(vm, vc.auth("lin-01"), "/no/such/file")
    with pytest.raises(vim.fault.FileNotFound):
        vc.processes.StartProgramInGuest(vm, vc.auth("lin-01"), Spec(programPath="/no/such/program", arguments=""))


def test_windows_stand_in_files_and_cmd(vc: Vc) -> None:
    vm = _ready(vc, "win-01")
    auth = vc.auth("win-01")
    vc.files.MakeDirectoryInGuest(vm, auth, r"C:\Users\Administrator\setup", createParentDirectories=False)
    url = vc.files.InitiateFileTransferToGuest(
        vm, auth, r"C:\Users\Administrator\setup\input.txt", vim.vm.guest.FileManager.FileAttributes(), 6, True
    )
    _put(vc, url, b"input\n")
    pid = vc.processes.StartProgramInGuest(
        vm,
        auth,
        Spec(
            programPath=r"C:\Windows\System32\cmd.exe",
            arguments="/c type input.txt input.txt > output.txt",
            workingDirectory=r"C:\Users\Administrator\setup",
        ),
    )
    assert _finished(vc, vm, "win-01", pid).exitCode == 0
    names = [f.path for f in vc.files.ListFilesInGuest(vm, auth, r"C:\Users\Administrator\setup").files]
    assert names == [".", "..", "input.txt", "output.txt"]
    back = vc.files.InitiateFileTransferFromGuest(vm, auth, r"C:\Users\Administrator\setup\output.txt")
    assert _get(vc, back.url) == b"input\ninput\n"
    temp = vc.files.CreateTemporaryFileInGuest(vm, auth, "bh", ".txt")
    assert temp.startswith("C:\\Windows\\Temp\\bh")


def test_transfer_urls_are_https_on_the_vcenter(vc: Vc) -> None:
    vm = _ready(vc, "lin-01")
    url = vc.files.InitiateFileTransferToGuest(
        vm, vc.auth("lin-01"), "/tmp/u", vim.vm.guest.FileManager.FileAttributes(), 1, True
    )
    assert url.startswith("https://127.0.0.1:443/")
    with pytest.raises(urllib.error.URLError) as caught:  # served with the lab's certificate
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)
