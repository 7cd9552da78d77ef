"""Writes to a VM itself rather than its guest: extraConfig keys and power state, each
checked through the API after it happens.

vCenter keeps one value per extraConfig key and drops a key set to the empty string.
Values are read last-wins, so a server that appends instead (govmomi's 0.24 simulator)
reads the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from beachhead.agent.errors import StepFailed
from beachhead.agent.vsphere.connection import VCenter, VSphereError

POWERED_ON = "poweredOn"
POWERED_OFF = "poweredOff"


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


def _task_fault(task: Any) -> str:
    fault = task.info.error
    return (getattr(fault, "msg", None) or type(fault).__name__) if fault is not None else "failed"


def _reconfigure(vm: Any, values: Mapping[str, str | None]) -> None:
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=k, value=v or "") for k, v in values.items()])
    task = vm.ReconfigVM_Task(spec=spec)
    try:
        WaitForTask(task)
    except vmodl.MethodFault:
        raise VSphereError(f"{vm.name}: reconfigure failed: {_task_fault(task)}") from None


async def write_extra_config(vcenter: VCenter, vm: Any, values: Mapping[str, str | None], action: str) -> None:
    """Set (None: remove) the keys, then read them back; a difference fails the step
    ``action`` naming the key, the value written and the value vCenter has."""
    await vcenter.call(_reconfigure, vm, values)
    found = await read_extra_config(vcenter, vm, values)
    for key, wanted in values.items():
        if found[key] != (wanted or None):
            raise StepFailed(action, f"extraConfig {key}: wrote {_shown(wanted)}, vCenter has {_shown(found[key])}")


def _power(vm: Any, on: bool) -> str:
    before = str(vm.runtime.powerState)
    if before == (POWERED_ON if on else POWERED_OFF):
        return before
    task = vm.PowerOnVM_Task() if on else vm.PowerOffVM_Task()
    try:
        WaitForTask(task)
    except vim.fault.InvalidPowerState:
        pass  # it changed meanwhile; the read-back below decides
    except vmodl.MethodFault:
        raise VSphereError(f"{vm.name}: power {'on' if on else 'off'} failed: {_task_fault(task)}") from None
    return before


async def set_power(vcenter: VCenter, vm: Any, on: bool, action: str) -> str:
    """Power the VM on or off (nothing to do when it already is), then read the power
    state back; returns the state before."""
    before = await vcenter.call(_power, vm, on)
    after = str(await vcenter.call(lambda: vm.runtime.powerState))
    wanted = POWERED_ON if on else POWERED_OFF
    if after != wanted:
        raise StepFailed(action, f"power state: wanted {wanted}, vCenter reports {after}")
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
