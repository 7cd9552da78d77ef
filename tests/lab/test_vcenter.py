"""The lab's vCenter as pyvmomi sees it: the --json contract, https verified against
the lab's CA, and a guest boot seen through WaitForUpdatesEx."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.conftest import beachhead
from tests.lab.conftest import FLEET_SIZE, Vc, listening, wait_for


def test_up_json_contract_and_idempotence(lab_config: Path, lab: dict[str, Any]) -> None:
    assert set(lab) == {"vcenter", "vms", "network"}
    assert set(lab["vcenter"]) == {"url", "username", "password", "ca_file", "stats_url"}
    assert lab["vcenter"]["url"] == "https://127.0.0.1:443/sdk"
    assert Path(lab["vcenter"]["ca_file"]).is_file()
    for vm in lab["vms"]:
        assert {"name", "os", "guest_id", "ip", "guest_username", "guest_password", "console"} <= set(vm)
        has_sshd = vm["os"] == "linux" and vm["console"] == "pty"
        assert (vm["ssh_host_key"] or "").startswith("ssh-ed25519 ") == has_sshd
    consoles = {vm["name"]: vm for vm in lab["vms"] if vm["console"] == "qemu"}
    assert Path(consoles["con-01"]["qmp_socket"]).parent == Path(consoles["con-01"]["serial_log"]).parent
    assert sorted(vm["os"] for vm in lab["vms"]).count("linux") >= 2
    assert any(vm["os"] == "windows" for vm in lab["vms"])

    status = beachhead("lab", "status", "--json")  # the command prints what the fixture read
    assert status.returncode == 0 and json.loads(status.stdout) == lab, status.stderr
    again = beachhead("lab", "up", "--config", str(lab_config), "--vms", str(FLEET_SIZE), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == lab  # reported, not restarted: same passwords
    assert "note" not in again.stderr
    other = beachhead("lab", "up", "--json")  # the default lab file: still the running lab, with a note
    assert json.loads(other.stdout) == lab
    assert "run `beachhead lab down` first to start it from" in other.stderr


def test_pyvmomi_defaults_connect_and_the_certificate_verifies_against_the_lab_ca(lab: dict[str, Any]) -> None:
    vcenter = lab["vcenter"]
    # pyvmomi's defaults: https on port 443 (it skips verification for 127.0.0.1).
    Disconnect(SmartConnect(host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"]))
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know the lab's
        SmartConnect(
            host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=ssl.create_default_context()
        )
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(
            host="127.0.0.1",
            user=vcenter["username"],
            pwd="wrong",
            sslContext=ssl.create_default_context(cafile=vcenter["ca_file"]),
        )


def test_vms_are_the_labs(vc: Vc) -> None:
    for guest in (vm for vm in vc.lab["vms"] if vm["console"] == "pty"):  # console VMs run no tools
        vm = vc.vm(guest["name"])
        assert vm.config.guestId == guest["guest_id"]
        wait_for(lambda vm=vm: vm.guest.toolsRunningStatus == "guestToolsRunning", what=f"{guest['name']} tools")
        assert vm.guest.ipAddress == guest["ip"]
        assert vm.guest.guestFamily == ("windowsGuest" if guest["os"] == "windows" else "linuxGuest")
        nic_mac = next(
            d.macAddress for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)
        )
        assert [n.macAddress for n in vm.guest.net] == [nic_mac]
        assert list(vm.guest.net[0].ipAddress) == [guest["ip"]]


def test_an_unset_property_reads_as_none_and_the_connection_survives(vc: Vc) -> None:
    """vCenter answers a Fetch of an unset property with no value; the 0.24 simulator
    alone would drop the connection."""
    vm = vc.vm("lin-01")
    assert vm.snapshot is None
    assert vm.parentVApp is None
    assert vm.name == "lin-01"


class Watcher:
    """Collects property changes of one VM through WaitForUpdatesEx."""

    PATHS: ClassVar[list[str]] = [
        "runtime.powerState",
        "guest.toolsRunningStatus",
        "guest.guestOperationsReady",
        "guest.ipAddress",
    ]

    def __init__(self, vc: Vc, vm: vim.VirtualMachine) -> None:
        self.collector = vc.content.propertyCollector.CreatePropertyCollector()
        spec = vim.PropertyFilterSpec(
            objectSet=[vim.ObjectSpec(obj=vm)],
            propSet=[vim.PropertySpec(type=vim.VirtualMachine, pathSet=self.PATHS)],
        )
        self.collector.CreateFilter(spec, partialUpdates=True)
        self.version = ""
        self.state: dict[str, Any] = {}
        self.changes: list[tuple[str, Any]] = []

    def until(self, done: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            update = self.collector.WaitForUpdatesEx(self.version, vim.WaitOptions(maxWaitSeconds=2))
            if update is not None:
                self.version = update.version
                for filter_update in update.filterSet:
                    for object_update in filter_update.objectSet:
                        for change in object_update.changeSet:
                            self.state[change.name] = change.val
                            self.changes.append((change.name, change.val))
            if done(self.state):
                return
        raise AssertionError(f"state not reached within {timeout}s: {self.state}")

    def close(self) -> None:
        self.collector.Destroy()


def test_power_cycle_boots_the_guest_as_property_collectors_see_it(vc: Vc) -> None:
    vm, guest = vc.vm("lin-02"), vc.guest("lin-02")
    wait_for(lambda: vm.guest.toolsRunningStatus == "guestToolsRunning", what="tools running")
    sleeper = vc.processes.StartProgramInGuest(
        vm, vc.auth("lin-02"), vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sleep", arguments="600")
    )
    assert Path(f"/proc/{sleeper}").exists() and listening(guest["ip"], 22, timeout=2)
    watcher = Watcher(vc, vm)
    try:
        watcher.until(lambda s: s.get("guest.toolsRunningStatus") == "guestToolsRunning")
        WaitForTask(vm.PowerOffVM_Task())
        watcher.until(
            lambda s: (
                s["runtime.powerState"] == "poweredOff" and s["guest.toolsRunningStatus"] == "guestToolsNotRunning"
            )
        )
        assert not watcher.state["guest.guestOperationsReady"] and not watcher.state.get("guest.ipAddress")
        wait_for(lambda: not Path(f"/proc/{sleeper}").exists(), what="guest process gone")
        assert not listening(guest["ip"], 22, timeout=2)
        with pytest.raises(vim.fault.InvalidPowerState):
            vc.processes.ListProcessesInGuest(vm, vc.auth("lin-02"))

        watcher.changes.clear()
        WaitForTask(vm.PowerOnVM_Task())
        with pytest.raises(vim.fault.GuestOperationsUnavailable):
            vc.processes.ListProcessesInGuest(vm, vc.auth("lin-02"))  # booting: tools not up yet
        watcher.until(lambda s: s["guest.toolsRunningStatus"] == "guestToolsRunning" and s.get("guest.ipAddress"))
    finally:
        watcher.close()
    names = [name for name, _ in watcher.changes]
    assert names.index("runtime.powerState") < names.index("guest.toolsRunningStatus")
    assert watcher.state["guest.ipAddress"] == guest["ip"] and watcher.state["guest.guestOperationsReady"] is True
    assert wait_for(lambda: listening(guest["ip"], 22, timeout=2), what="sshd back")
