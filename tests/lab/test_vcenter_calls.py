"""What many targets cost the vCenter, counted by the lab vCenter's own request
counters (``GET /lab/stats``): VM names read once for all lookups, VMs joining the
watcher in batches, tasks followed by the watcher instead of a collector each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from beachhead.agent.secrets import Secret
from beachhead.agent.vsphere.connection import VCenter, VCenterAddress, VmNotFound
from beachhead.agent.vsphere.states import VmState
from beachhead.agent.vsphere.vmconfig import set_power
from beachhead.bootstrap.lab.soap_stats import calls_since, soap_calls
from tests.lab.conftest import FLEET


@pytest.fixture
async def vcenter(lab: dict[str, Any]) -> AsyncIterator[VCenter]:
    """A logged-in VCenter session on the lab, closed after the test."""
    info = lab["vcenter"]
    address = VCenterAddress("127.0.0.1", 443, info["username"], ca_file=Path(info["ca_file"]))
    session = await VCenter(address, Secret(info["password"])).open()
    try:
        yield session
    finally:
        await session.close()


async def test_many_lookups_read_the_names_once_and_watches_join_in_batches(
    lab: dict[str, Any], vcenter: VCenter
) -> None:
    before = soap_calls(lab)
    vms = await asyncio.gather(*(vcenter.find_vm(name) for name in FLEET))
    snapshots = await asyncio.gather(*(vcenter.watcher.watch(vm) for vm in vms))
    calls = calls_since(before, soap_calls(lab))
    assert [snapshot.name for snapshot in snapshots] == FLEET
    assert calls["RetrieveProperties"] == 1, calls  # one name read for seventeen lookups
    assert calls["ModifyListView"] <= 2, calls  # not one per VM
    assert "Fetch" not in calls, calls  # nothing read property by property

    before = soap_calls(lab)
    with pytest.raises(VmNotFound, match=r"no VM named 'nobody\.invalid'"):
        await vcenter.find_vm("nobody.invalid")
    assert calls_since(before, soap_calls(lab))["RetrieveProperties"] == 1  # a miss reads the names again


async def test_power_tasks_are_followed_by_the_watcher(lab: dict[str, Any], vcenter: VCenter) -> None:
    vm = await vcenter.find_vm(FLEET[-2])
    assert (await vcenter.watcher.watch(vm)).power_state == "poweredOn"
    task = await vcenter.call(vm.PowerOnVM_Task)  # already on: vCenter fails the task
    async with asyncio.timeout(60):
        outcome = await vcenter.watcher.task_outcome(task)
    assert outcome.state == "error" and isinstance(outcome.error, vim.fault.InvalidPowerState), outcome

    before = soap_calls(lab)
    assert await set_power(vcenter, vm, False, "power: off") == "poweredOn"
    assert await set_power(vcenter, vm, True, "power: on") == "poweredOff"
    calls = calls_since(before, soap_calls(lab))
    assert calls.get("PowerOffVM_Task") == 1 and calls.get("PowerOnVM_Task") == 1, calls
    # no collector, filter or property read per task: the watcher's views carry them
    assert not {"CreateFilter", "WaitForUpdates", "Fetch", "RetrieveProperties"} & set(calls), calls
    assert vcenter.watcher.state(vm).power_state == "poweredOn"  # type: ignore[union-attr]
    async with asyncio.timeout(60):  # left as found: tools running again
        await vcenter.watcher.wait_for(vm, VmState.TOOLS_RUNNING)
