"""Keystrokes typed through PutUsbScanCodes run at the guest's console, and the guest's
own sshd answers on its address."""

from __future__ import annotations

import asyncssh
import pytest
from pyVmomi import vim

from tests.lab.conftest import Vc, wait_for

# USB HID usage ids (keyboard page) of the characters the tests type: (usage, shift).
_KEYS: dict[str, tuple[int, bool]] = {c: (0x04 + i, False) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
_KEYS.update({c: (0x04 + i, True) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")})
_KEYS.update({str((i + 1) % 10): (0x1E + i, False) for i in range(10)})
_KEYS.update(
    {
        "\n": (0x28, False),
        " ": (0x2C, False),
        "-": (0x2D, False),
        "_": (0x2D, True),
        "=": (0x2E, False),
        ">": (0x37, True),
        ".": (0x37, False),
        "/": (0x38, False),
        "$": (0x21, True),
        "'": (0x34, False),
        '"': (0x34, True),
        ";": (0x33, False),
    }
)


def key_events(text: str) -> list[vim.UsbScanCodeSpecKeyEvent]:
    """Key events typing ``text``, encoded as vSphere expects (usage << 16 | 7)."""
    events = []
    for char in text:
        usage, shift = _KEYS[char]
        event = vim.UsbScanCodeSpecKeyEvent(usbHidCode=(usage << 16) | 0x07)
        if shift:
            event.modifiers = vim.UsbScanCodeSpecModifierType(leftShift=True)
        events.append(event)
    return events


def _read_guest_file(vc: Vc, vm: vim.VirtualMachine, name: str, path: str) -> bytes | None:
    import urllib.request

    try:
        transfer = vc.files.InitiateFileTransferFromGuest(vm, vc.auth(name), path)
    except vim.fault.FileNotFound:
        return None
    with urllib.request.urlopen(transfer.url, context=vc.ssl_context, timeout=10) as response:
        data: bytes = response.read()
        return data


def test_typed_command_runs_at_the_console(vc: Vc) -> None:
    vm = vc.vm("lin-01")
    wait_for(lambda: vm.guest.guestOperationsReady, what="lin-01 booted")
    text = 'echo "Typed by vSphere" > /tmp/x\n'
    events = key_events(text)
    assert vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=events)) == len(events)
    content = wait_for(lambda: _read_guest_file(vc, vm, "lin-01", "/tmp/x"), what="/tmp/x written by the console")
    assert content == b"Typed by vSphere\n"


def test_keystrokes_need_a_powered_on_vm(vc: Vc) -> None:
    from pyVim.task import WaitForTask

    vm = vc.vm("lin-03")
    WaitForTask(vm.PowerOffVM_Task())
    try:
        with pytest.raises(vim.fault.InvalidPowerState):
            vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=key_events("ls\n")))
    finally:
        WaitForTask(vm.PowerOnVM_Task())


async def test_ssh_to_the_guest_address(vc: Vc) -> None:
    """The guest's sshd answers on its address with the host key the lab reports."""
    guest = vc.guest("lin-01")
    vm = vc.vm("lin-01")
    wait_for(lambda: vm.guest.ipAddress == guest["ip"], what="lin-01 address")
    known_hosts = asyncssh.import_known_hosts(f"{guest['ip']} {guest['ssh_host_key']}\n")
    async with asyncssh.connect(
        guest["ip"], username=guest["guest_username"], password=guest["guest_password"], known_hosts=known_hosts
    ) as connection:
        result = await connection.run("hostname; id -u; ip -4 -o address show eth0", check=True)
    hostname, uid, address = str(result.stdout).splitlines()
    assert (hostname, uid) == ("lin-01", "0")
    assert f"inet {guest['ip']}/" in address


async def test_ssh_refuses_a_wrong_password(vc: Vc) -> None:
    guest = vc.guest("lin-02")
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            guest["ip"], username=guest["guest_username"], password="wrong", known_hosts=None, connect_timeout=10
        )


async def test_a_non_root_guest_login_may_sudo_with_its_password(vc: Vc) -> None:
    guest = vc.guest("lin-03")
    wait_for(lambda: vc.vm("lin-03").guest.ipAddress == guest["ip"], what="lin-03 address")
    async with asyncssh.connect(
        guest["ip"], username=guest["guest_username"], password=guest["guest_password"], known_hosts=None
    ) as connection:
        plain = await connection.run("id -un", check=True)
        refused = await connection.run("sudo -S -p '' id -un", input="wrong\n")
        elevated = await connection.run("sudo -S -p '' id -un", input=guest["guest_password"] + "\n")
    assert str(plain.stdout).strip() == "admin"
    assert refused.exit_status != 0
    assert (elevated.exit_status, str(elevated.stdout).strip()) == (0, "root")
