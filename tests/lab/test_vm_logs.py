"""`beachhead logs` fetches a VM's vmware.log through the datastore file API; the lab
writes what happens in the guest (boot, tools, keystrokes, programs started) into it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyVmomi import vim

from tests.conftest import beachhead
from tests.lab.conftest import Vc, wait_for
from tests.lab.test_console_and_ssh import key_events


def test_logs_print_the_vms_vmware_log(vc: Vc, vsphere_uri: Callable[..., str]) -> None:
    vm = vc.vm("lin-02")
    wait_for(lambda: vm.guest.toolsRunningStatus == "guestToolsRunning", what="tools running")
    typed = key_events("true\n")
    assert vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=typed)) == len(typed)
    pid = vc.processes.StartProgramInGuest(
        vm, vc.auth("lin-02"), vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/true", arguments="")
    )
    printed = beachhead("logs", vsphere_uri("lin-02"))
    assert printed.returncode == 0, printed.stderr
    log = printed.stdout
    assert "vmx " in log and "created" in log  # the simulator's own lines
    assert "Tools: running; guest lin-02 at " + vc.guest("lin-02")["ip"] in log
    assert f"PutUsbScanCodes: {len(typed)} key events" in log
    assert f"StartProgramInGuest /bin/true as root: pid {pid}" in log


def test_logs_output_saves_them_under_the_vm_name(tmp_path: Path, vc: Vc, vsphere_uri: Callable[..., str]) -> None:
    vm = vc.vm("lin-01")
    wait_for(lambda: vm.guest.toolsRunningStatus == "guestToolsRunning", what="tools running")
    saved = beachhead("logs", vsphere_uri("lin-01"), "--output", str(tmp_path / "logs"))
    assert saved.returncode == 0, saved.stderr
    log = tmp_path / "logs" / "lin-01" / "vmware.log"
    assert f"{log}  " in saved.stdout
    assert "Tools: running; guest lin-01" in log.read_text()


def test_logs_of_an_unknown_vm_or_a_non_vsphere_target_fail_clearly(vsphere_uri: Callable[..., str]) -> None:
    unknown = beachhead("logs", vsphere_uri("lin-01").replace("/lin-01?", "/no-such-vm?"))
    assert unknown.returncode == 1 and "no-such-vm" in unknown.stderr, unknown.stderr
    ssh = beachhead("logs", "ssh://root@127.0.0.1")
    assert ssh.returncode == 2 and "give a vsphere:// target" in ssh.stderr
