"""The lab's QEMU console VM (con-01): a real machine booting to a root shell, typed at
through PutUsbScanCodes (QMP input events, QEMU's own input queue), pictured by
CreateScreenshot_Task, with its own VNC console when RemoteDisplay.vnc.* say so.

One QEMU boot for the module's tests: the fixture powers con-01 off, sets its VNC
options and powers it on again (ESXi reads them at power-on); the last test powers it
off, and the fixture powers it on once more, without VNC, for the modules after this
one (which wait for its ready line themselves: the boot overlaps the tests between).

The vnc keys backend on con-01's own VNC console (QEMU's, as RemoteDisplay.vnc.* turn
it on, with QEMU's default key delay) types 1 KiB exactly into its shell, read back from
its serial port, and its screen reads as its shell."""

from __future__ import annotations

import io
import json
import re
import secrets
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from beachhead.agent.vsphere.vmlogs import datastore_file_url, log_location
from beachhead.plugins.keyboard import LEFT_CTRL, hold, load_layout
from beachhead.plugins.screen_text import wait_for_text
from beachhead.plugins.vnc_console import VncConsole
from tests.conftest import await_until, beachhead
from tests.console.vnc_typing import mixed_text
from tests.lab.conftest import connect, wait_for
from tests.lab.test_console_and_ssh import key_events

BOOT_TIMEOUT_S = 120  # TCG boots in about 10 s on two cores; CI machines may be slower
PACE_S = 0.02
READY = "beachhead-console: ready"
# QEMU's default key-delay-ms spaces key events 10 ms apart and drops what overflows its
# queue: 10 ms a key event is the fastest that loses nothing over VNC (measured: 5 ms
# loses keys).
VNC_PACE_S = 0.010
VNC_END = "END-OF-TYPING"


@dataclass
class ConsoleVm:
    """con-01, booted once for the module, and what the lab says about it."""

    si: vim.ServiceInstance
    vm: vim.VirtualMachine
    entry: dict[str, Any]
    ssl_context: ssl.SSLContext
    vnc_port: int

    @property
    def serial(self) -> Path:
        """What the guest wrote to its serial port since power-on."""
        return Path(self.entry["serial_log"])

    def serial_text(self) -> str:
        """The serial file's text (empty before QEMU made it)."""
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _free_vnc_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    assert port > 5900  # QEMU's VNC display N is port 5900 + N
    return port


def _vm(si: vim.ServiceInstance, name: str) -> vim.VirtualMachine:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def _qemu_pids(qmp_socket: str) -> list[int]:
    """Running processes whose command line names the VM's QMP socket."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if qmp_socket.encode() in cmdline and b"qemu-system" in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _qmp(path: str, command: str) -> Any:
    """One QMP command on the VM's public monitor, and its result."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(path)
        stream = connection.makefile("rw")
        assert "QMP" in json.loads(stream.readline())
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            while "event" in (reply := json.loads(stream.readline())):
                pass
        return reply["return"]


@pytest.fixture(scope="module")
def console(lab_session: Path) -> Iterator[ConsoleVm]:
    """con-01 powered on with a VNC console (password set) and booted to its shell."""
    status = beachhead("lab", "status", "--json")
    assert status.returncode == 0, status.stderr
    lab = json.loads(status.stdout)
    context = ssl.create_default_context(cafile=lab["vcenter"]["ca_file"])
    si = connect(lab, context)
    vm = _vm(si, "con-01")
    entry = next(item for item in lab["vms"] if item["name"] == "con-01")
    if vm.runtime.powerState == "poweredOn":
        WaitForTask(vm.PowerOffVM_Task())
    # The launcher follows the power state right after the task: QEMU ends a moment later.
    wait_for(lambda: not _qemu_pids(entry["qmp_socket"]), what="the lab's QEMU of con-01 stopped")
    port = _free_vnc_port()
    options = {
        "RemoteDisplay.vnc.enabled": "true",
        "RemoteDisplay.vnc.port": str(port),
        "RemoteDisplay.vnc.password": secrets.token_hex(4),
    }
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in options.items()])
    WaitForTask(vm.ReconfigVM_Task(spec))
    Path(entry["serial_log"]).unlink(missing_ok=True)
    WaitForTask(vm.PowerOnVM_Task())
    machine = ConsoleVm(si, vm, entry, context, port)
    wait_for(lambda: READY in machine.serial_text(), timeout=BOOT_TIMEOUT_S, what="con-01 booted to its shell")
    yield machine
    # Leave con-01 as the lab had it: booted to its shell, without a VNC console.
    vm = machine.vm
    if vm.runtime.powerState == "poweredOn":
        WaitForTask(vm.PowerOffVM_Task())
    wait_for(lambda: not _qemu_pids(entry["qmp_socket"]), what="QEMU of con-01 stopped")
    off = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="RemoteDisplay.vnc.enabled", value="false")])
    WaitForTask(vm.ReconfigVM_Task(off))
    Path(entry["serial_log"]).unlink(missing_ok=True)
    WaitForTask(vm.PowerOnVM_Task())  # not waited for: the next user waits for READY
    Disconnect(machine.si)


def _type_paced(vm: vim.VirtualMachine, text: str) -> None:
    for event in key_events(text):
        assert vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=[event])) == 1
        time.sleep(PACE_S)


def _ctrl(letter: str) -> vim.UsbScanCodeSpecKeyEvent:
    return vim.UsbScanCodeSpecKeyEvent(
        usbHidCode=((0x04 + ord(letter) - ord("a")) << 16) | 0x07,
        modifiers=vim.UsbScanCodeSpecModifierType(leftControl=True),
    )


def _screenshot(si: vim.ServiceInstance, vm: vim.VirtualMachine, context: ssl.SSLContext) -> tuple[str, bytes]:
    """CreateScreenshot_Task's datastore path, and the file fetched as `beachhead logs`
    fetches vmware.log: the datastore file API with the session's cookie."""
    task = vm.CreateScreenshot_Task()
    WaitForTask(task)
    result: str = task.info.result
    datastore, folder, datacenter = log_location(vm)
    prefix = f"[{datastore}] {folder}/"
    assert result.startswith(prefix), result
    url = datastore_file_url("https://127.0.0.1:443", (datastore, folder, datacenter), result.removeprefix(prefix))
    request = urllib.request.Request(url, headers={"Cookie": si._stub.cookie})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return result, bytes(response.read())


def _assert_console_picture(png: bytes, width: int, height: int) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png)).convert("L")
    assert image.size == (width, height)
    top = image.crop((0, 0, width, height // 4))  # the shell's first lines are there
    low, high = top.getextrema()
    assert low < high and high > 128, "no text on the console's first lines"
    return image


def test_console_vm_boots_to_a_shell_with_no_tools(console: ConsoleVm) -> None:
    vm = console.vm
    assert vm.runtime.powerState == "poweredOn"
    assert console.serial_text().count(READY) == 1
    assert f"{READY} con-01 ssh-ed25519 " in console.serial_text()  # dropbear's host key, made at boot
    assert len(_qemu_pids(console.entry["qmp_socket"])) == 1
    assert _qmp(console.entry["qmp_socket"], "query-status")["status"] == "running"
    assert vm.guest.toolsRunningStatus != "guestToolsRunning"
    manager = console.si.RetrieveContent().guestOperationsManager.processManager
    auth = vim.vm.guest.NamePasswordAuthentication(username="root", password="x")
    with pytest.raises(vim.fault.GuestOperationsUnavailable):
        manager.ListProcessesInGuest(vm, auth)


def test_paced_typing_arrives_intact(console: ConsoleVm) -> None:
    mark = f"MARK_{secrets.token_hex(4)}-Typed_OK.{secrets.randbelow(10**6)}"
    _type_paced(console.vm, f"echo {mark} > /dev/ttyS0\n")
    wait_for(lambda: f"\n{mark}\n" in console.serial_text(), timeout=30, what=f"{mark} on the serial port")


def test_unpaced_typing_loses_keys(console: ConsoleVm) -> None:
    """1,024 characters in one call: QEMU's keyboard queue overflows, as a real
    console's does when flooded; the lines that did arrive show how much got lost."""
    _type_paced(console.vm, "cat > /dev/ttyS0\n")
    start = len(console.serial_text())
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    flood = "".join(secrets.choice(alphabet) for _ in range(1024))
    events = key_events(flood + "\n")
    assert console.vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=events)) == len(events)
    time.sleep(3)  # what the guest got of it is on its tty by now
    _type_paced(console.vm, "\n")
    console.vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=[_ctrl("c")]))  # ends cat
    time.sleep(PACE_S)
    end = f"END_{secrets.token_hex(4)}"
    _type_paced(console.vm, f"echo {end} > /dev/ttyS0\n")
    wait_for(lambda: f"\n{end}\n" in console.serial_text(), timeout=30, what="the shell after the flood")
    arrived = console.serial_text()[start:].split(end)[0].replace("\r", "").replace("\n", "")
    assert len(arrived) < len(flood), f"{len(arrived)} of {len(flood)} characters arrived"


def test_screenshot_of_the_console_vm_shows_its_shell(console: ConsoleVm, tmp_path: Path) -> None:
    path, png = _screenshot(console.si, console.vm, console.ssl_context)
    assert re.fullmatch(r"\[[^\]]+\] con-01/con-01-\d+\.png", path), path
    (tmp_path / "con-01.png").write_bytes(png)
    _assert_console_picture(png, 720, 400)  # VGA text mode, 80x25 cells of 9x16
    again, _ = _screenshot(console.si, console.vm, console.ssl_context)
    assert again != path  # each screenshot is a file of its own, VM-1.png, VM-2.png, ...


def test_screenshot_of_a_pty_console_is_drawn_from_its_output(console: ConsoleVm, tmp_path: Path) -> None:
    vm = _vm(console.si, "lin-01")
    wait_for(lambda: vm.guest.toolsRunningStatus == "guestToolsRunning", what="lin-01 booted")
    events = key_events("echo pictured\n")
    assert vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=events)) == len(events)
    time.sleep(1)
    path, png = _screenshot(console.si, vm, console.ssl_context)
    assert re.fullmatch(r"\[[^\]]+\] lin-01/lin-01-\d+\.png", path), path
    (tmp_path / "lin-01.png").write_bytes(png)
    image = Image.open(io.BytesIO(png))
    _assert_console_picture(png, *image.size)
    assert image.size[0] > image.size[1] > 100


def test_vnc_console_follows_remote_display_options(console: ConsoleVm) -> None:
    with socket.create_connection(("127.0.0.1", console.vnc_port), timeout=10) as vnc:
        banner = vnc.recv(12)
        assert banner == b"RFB 003.008\n"
        vnc.sendall(banner)
        count = vnc.recv(1)[0]
        offered = vnc.recv(count)
    assert 2 in offered  # VNC authentication: the password is set
    assert 1 not in offered  # and nobody gets in without it
    cmdline = Path(f"/proc/{_qemu_pids(console.entry['qmp_socket'])[0]}/cmdline").read_bytes()
    password = next(
        option.value for option in console.vm.config.extraConfig if option.key == "RemoteDisplay.vnc.password"
    )
    assert password.encode() not in cmdline  # set through QMP, never on a command line


@pytest.mark.timeout(240)
async def test_1kib_over_con01_vnc_console(console: ConsoleVm) -> None:
    events, expected = mixed_text(control_keys=False, seed=31)
    us = load_layout("us")
    options = {option.key: option.value for option in console.vm.config.extraConfig}
    password = options["RemoteDisplay.vnc.password"]
    vnc = await VncConsole.open("127.0.0.1", console.vnc_port, password, timeout_s=30)
    try:
        assert vnc.extended_keys
        await wait_for_text(vnc.screenshot, "BusyBox", timeout_s=60)
        offset = len(_serial_lf(console))
        await vnc.send(us.events_for_text("stty -echo; cat > /dev/ttyS0\n"), pace_s=VNC_PACE_S)
        await vnc.send(events, pace_s=VNC_PACE_S)
        await vnc.send(us.events_for_text(f"\n{VNC_END}\n"), pace_s=VNC_PACE_S)
        await await_until(lambda: VNC_END in _serial_lf(console)[offset:], 60, "the typed text on the serial port")
        await vnc.send(hold([LEFT_CTRL], us.events_for_text("d")), pace_s=VNC_PACE_S)
        await vnc.send(us.events_for_text("stty echo\n"), pace_s=VNC_PACE_S)  # the shell as it was
    finally:
        await vnc.close()
    assert _serial_lf(console)[offset:].partition(f"\n{VNC_END}")[0] == expected.decode()


def _serial_lf(machine: ConsoleVm) -> str:
    return machine.serial_text().replace("\r\n", "\n")


def test_a_vcenter_restart_leaves_the_machine_running(console: ConsoleVm) -> None:
    """As hosts keep their VMs running while vCenter restarts: the same QEMU, its shell
    and keyboard taken over by the new launcher."""
    before = _qemu_pids(console.entry["qmp_socket"])
    restarted = beachhead("lab", "restart-vcenter", timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    lab = json.loads(beachhead("lab", "status", "--json").stdout)
    console.si = connect(lab, console.ssl_context)
    console.vm = _vm(console.si, "con-01")
    assert console.vm.runtime.powerState == "poweredOn"
    assert _qemu_pids(console.entry["qmp_socket"]) == before
    mark = f"AFTER_{secrets.token_hex(4)}"
    _type_paced(console.vm, f"echo {mark} > /dev/ttyS0\n")
    wait_for(lambda: f"\n{mark}\n" in console.serial_text(), timeout=30, what=f"{mark} on the serial port")


def test_power_off_stops_qemu(console: ConsoleVm) -> None:
    qmp = console.entry["qmp_socket"]
    assert _qemu_pids(qmp)
    WaitForTask(console.vm.PowerOffVM_Task())
    wait_for(lambda: not _qemu_pids(qmp) and not Path(qmp).exists(), what="QEMU ended, its QMP socket gone")
    with pytest.raises(vim.fault.InvalidPowerState):
        console.vm.PutUsbScanCodes(vim.UsbScanCodeSpec(keyEvents=key_events("x")))
    task = console.vm.CreateScreenshot_Task()
    with pytest.raises(vim.fault.InvalidPowerState):
        WaitForTask(task)
