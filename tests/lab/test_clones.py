"""Cloning in the lab, as provisioning tools do it: CloneVM_Task gives the clone a
guest of its own (a copy of the source's files, its own MAC, DHCP address, host name
and sshd host key), PowerOnVM_Task boots it, Destroy_Task removes it again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from typing import Any

import asyncssh
import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from beachhead.bootstrap.lab import dhcp
from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import beachhead
from tests.lab.conftest import Vc, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.root]


def _status() -> dict[str, Any]:
    done = beachhead("lab", "status", "--json")
    assert done.returncode == 0, done.stderr
    lab: dict[str, Any] = json.loads(done.stdout)
    return lab


def _mac(vm: vim.VirtualMachine) -> str:
    [nic] = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    mac: str = nic.macAddress
    return mac


def _clone(vc: Vc, source: str, name: str) -> vim.Task:
    vm = vc.vm(source)
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=vm.resourcePool), powerOn=False)
    return vm.CloneVM_Task(folder=vm.parent, name=name, spec=spec)


async def _ssh(guest: dict[str, Any], command: str) -> str:
    known_hosts = asyncssh.import_known_hosts(f"{guest['ip']} {guest['ssh_host_key']}\n")
    async with asyncssh.connect(
        guest["ip"],
        username=guest["guest_username"],
        password=guest["guest_password"],
        known_hosts=known_hosts,
        connect_timeout=10,
    ) as connection:
        result = await connection.run(command, check=True, timeout=10)
    return str(result.stdout)


def test_a_clone_gets_a_guest_of_its_own_until_it_is_destroyed(vc: Vc) -> None:
    source = vc.guest("lin-01")
    # What the source's disk holds comes along: a file in its /root.
    marker = lab_dir() / "guests/lin-01/root/cloned-from.txt"
    marker.write_text("lin-01's disk\n")
    try:
        WaitForTask(_clone(vc, "lin-01", "web-01"))
    finally:
        marker.unlink()
    clone = vc.vm("web-01")
    assert clone.runtime.powerState == "poweredOff"
    assert _mac(clone) != _mac(vc.vm("lin-01")) and _mac(clone).startswith("00:50:56:")
    entry = next(vm for vm in _status()["vms"] if vm["name"] == "web-01")
    assert entry["clone_of"] == "lin-01" and entry["moref"] == clone._moId
    assert entry["ip"] != source["ip"] and entry["ssh_host_key"] != source["ssh_host_key"]
    assert entry["guest_password"] == source["guest_password"]  # the same accounts as its source

    WaitForTask(clone.PowerOnVM_Task())
    wait_for(lambda: clone.guest.toolsRunningStatus == "guestToolsRunning", 30, "the clone's VMware Tools")
    assert clone.guest.ipAddress == entry["ip"] and clone.guest.hostName == "web-01"
    assert [nic.macAddress for nic in clone.guest.net] == [_mac(clone)]
    output = asyncio.run(_ssh(entry, "hostname; cat /root/cloned-from.txt"))
    assert output.splitlines() == ["web-01", "lin-01's disk"]

    entry_mac = _mac(clone)
    WaitForTask(clone.PowerOffVM_Task())
    WaitForTask(clone.Destroy_Task())
    assert all(vm["name"] != "web-01" for vm in _status()["vms"])
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "bhlab-web-01" not in namespaces
    assert not (lab_dir() / "guests/web-01").exists()
    assert not (dhcp.hosts_dir(lab_dir()) / "web-01").exists()
    # The source VM is untouched: its name, its host key (pinned), its MAC.
    assert _mac(vc.vm("lin-01")) != entry_mac
    assert asyncio.run(_ssh(source, "hostname")).strip() == "lin-01"


def _destroy_clones(vc: Vc, tasks: list[vim.Task], prefix: str) -> None:
    """Wait for the clone tasks however they end, then destroy every VM they left (a
    failed clone stays in the inventory), so that later tests see the lab as it was."""
    for task in tasks:
        with contextlib.suppress(vmodl.MethodFault):
            WaitForTask(task)
    view = vc.content.viewManager.CreateContainerView(vc.content.rootFolder, [vim.VirtualMachine], True)
    try:
        left = [vm for vm in view.view if vm.name.startswith(prefix)]
    finally:
        view.Destroy()
    for vm in left:
        WaitForTask(vm.Destroy_Task())


def test_clones_made_at_once_get_addresses_of_their_own(vc: Vc) -> None:
    tasks = [_clone(vc, "lin-02", f"batch-{n}") for n in range(3)]
    try:
        for task in tasks:
            WaitForTask(task)
        clones = [vm for vm in _status()["vms"] if vm["name"].startswith("batch-")]
        assert len({vm["ip"] for vm in clones}) == 3 and {vm["clone_of"] for vm in clones} == {"lin-02"}
    finally:
        _destroy_clones(vc, tasks, "batch-")
    assert not any(vm["name"].startswith("batch-") for vm in _status()["vms"])


def test_a_clone_the_lab_cannot_give_a_guest_fails_its_task_with_the_reason(vc: Vc) -> None:
    with pytest.raises(vmodl.fault.SystemError, match="VM names match"):
        WaitForTask(_clone(vc, "lin-01", "Web_01"))
    # The clone stays in the inventory without a guest, as a failed clone's object may.
    orphan = vc.vm("Web_01")
    assert all(vm["name"] != "Web_01" for vm in _status()["vms"])
    WaitForTask(orphan.Destroy_Task())
