"""Writes to a VM itself rather than its guest: extraConfig keys and power state, each
checked through the API after it happens.

vCenter keeps one value per extraConfig key and drops a key set to the empty string.
Values are read last-wins, so a server that appends instead (govmomi's 0.24 simulator)
reads the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from pyVmomi import vim

from beachhead.agent.errors import StepFailed
from beachhead.agent.vsphere.connection import VCenter, VSphereError

POWERED_ON = "poweredOn"
POWERED_OFF = "poweredOff"
TASK_TIMEOUT_S = 600.0  # a reconfigure or power task that has not ended by now will not
READ_BACK_S = 30.0  # from a task's end to the watcher seeing the new power state


def _shown(value: str | None) -> str:
    if value is None:
        return "(unset)"
    return repr(value) if len(value) <= 80 else f"{value[:77]!r}... ({len(value)} characters)"


def _current_values(vm: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    for option in vm.config.extraConfig or ():
        value = "" if option.value is None else str(option.value)
        if value:
            values[option.key] = value
        else:
            values.pop(option.key, None)
    return values


async def read_extra_config(vcenter: VCenter, vm: Any, keys: Iterable[str]) -> dict[str, str | None]:
    """The VM's current values of ``keys`` (None for a key that is not set)."""
    current = await vcenter.call(_current_values, vm)
    return {key: current.get(key) for key in keys}


async def _finish(vcenter: VCenter, vm: Any, task: Any, what: str) -> None:
    """Wait (bounded) for a task on ``vm`` that the watcher follows; raise when it failed,
    except for a fault the read-back after it decides (InvalidPowerState: the power
    state changed meanwhile)."""
    try:
        async with asyncio.timeout(TASK_TIMEOUT_S):
            outcome = await vcenter.watcher.task_outcome(task)
    except TimeoutError:
        name = await vcenter.call(lambda: vm.name)
        raise VSphereError(f"{name}: {what}: the task did not end within {TASK_TIMEOUT_S:g}s") from None
    if outcome.state == "error" and not isinstance(outcome.error, vim.fault.InvalidPowerState):
        name = await vcenter.call(lambda: vm.name)
        raise VSphereError(f"{name}: {what} failed: {outcome.fault_text}")


async def write_extra_config(vcenter: VCenter, vm: Any, values: Mapping[str, str | None], action: str) -> None:
    """Set (None: remove) the keys, then read them back; a difference fails the step
    ``action`` naming the key, the value written and the value vCenter has."""
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=k, value=v or "") for k, v in values.items()])
    task = await vcenter.call(vm.ReconfigVM_Task, spec)
    await _finish(vcenter, vm, task, "reconfigure")
    found = await read_extra_config(vcenter, vm, values)
    for key, wanted in values.items():
        if found[key] != (wanted or None):
            raise StepFailed(action, f"extraConfig {key}: wrote {_shown(wanted)}, vCenter has {_shown(found[key])}")


async def set_power(vcenter: VCenter, vm: Any, on: bool, action: str) -> str:
    """Power the VM on or off (nothing to do when it already is), then read the power
    state back from the watcher (what vCenter reported after the task); returns the
    state before. The watcher follows the task, so this costs the power call alone."""
    watcher, wanted = vcenter.watcher, POWERED_ON if on else POWERED_OFF
    before = (await watcher.watch(vm)).power_state
    if before == wanted:
        return before
    task = await vcenter.call(vm.PowerOnVM_Task if on else vm.PowerOffVM_Task)
    await _finish(vcenter, vm, task, f"power {'on' if on else 'off'}")
    try:
        async with asyncio.timeout(READ_BACK_S):
            await watcher.wait_until(vm, lambda snapshot: snapshot.power_state == wanted)
    except TimeoutError:
        # The watcher's update can lag a busy vCenter (seen at 500 VMs): ask it directly.
        now = str(await vcenter.call(lambda: vm.runtime.powerState))
        if now != wanted:
            raise StepFailed(action, f"power state: wanted {wanted}, vCenter reports {now}") from None
    return before


def nic_macs(vm: Any) -> list[str]:
    """The MACs of the VM's network adapters (lower case), in device order."""
    devices = vm.config.hardware.device if vm.config else ()
    return [
        str(device.macAddress).lower()
        for device in devices
        if isinstance(device, vim.vm.device.VirtualEthernetCard) and device.macAddress
    ]


def vm_address(vm: Any) -> tuple[str | None, str | None]:
    """The VM's reported guest address (None before tools report one) and its first
    network adapter's MAC (known before it boots)."""
    macs = nic_macs(vm)
    ip = vm.guest.ipAddress if vm.guest is not None else None
    return (str(ip) if ip else None), (macs[0] if macs else None)
