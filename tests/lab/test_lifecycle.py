"""`beachhead lab down` leaves nothing behind, `up` comes back, and bad lab files are
refused before anything starts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from pyVmomi import vim

from beachhead.bootstrap.lab.lab import lab_dir
from beachhead.bootstrap.lab.lock import LOCK_FILE
from tests.conftest import beachhead
from tests.lab.conftest import FLEET_SIZE, Vc, wait_for

LAB_DIR = lab_dir()


def _leftovers() -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"namespace {line.split()[0]}" for line in netns.splitlines() if line.startswith("bhlab-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found += [f"interface {line.split(':')[1].strip()}" for line in links.splitlines() if ": bhlab" in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # Not a process waiting for the lab's lock (another session's `flock`): it is no part of the lab.
        if "beachhead-lab" in cmdline.replace(str(LOCK_FILE), "") or "/lab/launcher-" in cmdline or _lab_dhcp(cmdline):
            found.append(f"process {pid}: {cmdline.strip()}")
    addresses = subprocess.run(["ip", "-o", "address", "show"], capture_output=True, text=True, check=True).stdout
    found += [f"address {line.split()[3]}" for line in addresses.splitlines() if " 169.254.169.254/32 " in line]
    return found


def _lab_dhcp(cmdline: str) -> bool:
    """A DHCP server or client of the lab (their files are in the lab directory)."""
    return cmdline.split(" ")[0].endswith(("dnsmasq", "dhclient")) and str(LAB_DIR) in cmdline


def test_down_leaves_nothing_behind_and_up_restores(lab_session: Path) -> None:
    running = _leftovers()
    assert any("dnsmasq" in item for item in running), "the lab should be running before this test"
    assert "address 169.254.169.254/32" in running
    down = beachhead("lab", "down")
    try:
        assert down.returncode == 0, down.stderr
        assert "removed namespace bhlab-lin-01" in down.stdout
        assert _leftovers() == []
        status = beachhead("lab", "status", "--json")
        assert status.returncode == 1 and json.loads(status.stdout) == {"running": False}
        assert beachhead("lab", "down").returncode == 0  # nothing to do is fine
    finally:  # up again whatever failed: the session's later tests need the lab
        up = beachhead("lab", "up", "--config", str(lab_session), "--vms", str(FLEET_SIZE), "--json", timeout=300)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["vms"][0]["name"] == "lin-01"
    again = _leftovers()
    dhclients = [item for item in again if "dhclient" in item]
    guests = [vm for vm in json.loads(up.stdout)["vms"] if vm["console"] == "pty"]  # console VMs have no dhclient
    assert len(dhclients) == len(guests), again


def test_restart_vcenter_drops_sessions_and_keeps_the_vms(vc: Vc) -> None:
    """As after a vCenter service restart: the old session is gone, a new login sees the
    same VMs under the same ids, and their guests ran on meanwhile: a program started
    before the restart is still listed, and its exit code is collected after it."""
    before = {vm["name"]: vm["moref"] for vm in vc.lab["vms"]}
    lin_01 = vc.vm("lin-01")
    wait_for(lambda: lin_01.guest.guestOperationsReady, what="lin-01 guest operations ready")
    spec = vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sh", arguments="-c 'sleep 4; exit 7'")
    pid = vc.processes.StartProgramInGuest(lin_01, vc.auth("lin-01"), spec)
    restarted = beachhead("lab", "restart-vcenter", "--down-seconds", "1", timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    with contextlib.suppress(OSError):  # the old keep-alive connection died with it
        _ = lin_01.runtime.powerState
    with pytest.raises(vim.fault.NotAuthenticated):
        _ = lin_01.runtime.powerState
    again = Vc(vc.connect(), vc.lab, vc.ssl_context)
    assert {name: again.vm(name)._moId for name in before} == before
    vm = again.vm("lin-01")
    assert vm.runtime.powerState == "poweredOn"
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"  # no boot: the guest ran on

    def ended() -> vim.vm.guest.ProcessManager.ProcessInfo | None:
        (info,) = again.processes.ListProcessesInGuest(vm, vc.auth("lin-01"), [pid])
        return info if info.endTime else None

    assert wait_for(ended, what=f"pid {pid} ends after the restart").exitCode == 7
    status = beachhead("lab", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["vms"][0]["moref"] == before["lin-01"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vms: []\n", "vms (line 1): must be a non-empty list of VMs"),
        ("vms:\n  - {name: a, guest_id: x, os: linux, guest_username: root}\n", "vms[1].guest_id (line 2)"),
        ("vms:\n  - {name: a, guest_id: otherGuest, os: beos, guest_username: root}\n", "vms[1].os (line 2)"),
        ("vcenter: {host: 10.0.0.1}\nvms: []\n", "vcenter.host (line 1): the lab's vCenter listens on loopback only"),
        ("network: {subnet: 8.8.8.0/24}\nvms: []\n", "network.subnet (line 1): must be a private IPv4 network"),
        ("vms:\n  - {name: a, guest_id: otherGuest, os: linux, guest_username: root, colour: red}\n", "colour"),
        (
            "vms:\n  - {name: a, guest_id: otherGuest, os: linux, guest_username: root}\n"
            "  - {name: a, guest_id: otherGuest, os: linux, guest_username: root}\n",
            "vms[2].name (line 3): VM name 'a' appears twice",
        ),
        (
            "vms:\n  - {name: a, guest_id: otherGuest, os: linux, guest_username: root, cloudbase_init: true}\n",
            "vms[1].cloudbase_init (line 2): cloudbase-init runs on Windows guests only",
        ),
        (
            "vms:\n  - {name: a, guest_id: otherGuest, os: windows, guest_username: A, cloudbase_init: yes please}\n",
            "vms[1].cloudbase_init (line 2): must be true or false",
        ),
        (
            "vms:\n  - {name: a, guest_id: otherGuest, os: linux, guest_username: root, console: vga}\n",
            "vms[1].console (line 2): must be one of pty, qemu",
        ),
        (
            "vms:\n  - {name: a, guest_id: otherGuest, os: windows, console: qemu}\n",
            "vms[1].console (line 2): a QEMU console VM runs Linux",
        ),
        (
            "vms:\n  - {name: a, guest_id: otherGuest, os: linux, console: qemu, guest_username: root}\n",
            "vms[1].guest_username (line 2): a QEMU console VM has no guest login",
        ),
    ],
)
def test_bad_lab_file_exits_2_naming_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "lab.yaml"
    config.write_text(text)
    result = beachhead("lab", "up", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert str(config) in result.stderr and message in result.stderr


def test_lab_help_explains_the_commands() -> None:
    result = beachhead("lab", "--help")
    assert result.returncode == 0
    for command in ("up", "status", "down"):
        assert command in result.stdout
