"""The vnc keys backend on the lab's console VM: con-01's own VNC console (QEMU's, as
RemoteDisplay.vnc.* turn it on, with QEMU's default key delay) types 1 KiB exactly into
its shell, read back from its serial port, and its screen reads as its shell."""

from __future__ import annotations

import pytest

from beachhead.plugins.keyboard import LEFT_CTRL, hold, load_layout
from beachhead.plugins.screen_text import wait_for_text
from beachhead.plugins.vnc_console import VncConsole
from tests.conftest import await_until
from tests.console.vnc_typing import mixed_text
from tests.lab.test_console_vm import ConsoleVm, console

__all__ = ["console"]  # the module's fixture: con-01 booted with a VNC console

# QEMU's default key-delay-ms spaces key events 10 ms apart and drops what overflows its
# queue: 10 ms a key event is the fastest that loses nothing (measured: 5 ms loses keys).
PACE_S = 0.010
END = "END-OF-TYPING"


def _password(machine: ConsoleVm) -> str:
    options = {option.key: option.value for option in machine.vm.config.extraConfig}
    password: str = options["RemoteDisplay.vnc.password"]
    return password


def _serial(machine: ConsoleVm) -> str:
    return machine.serial_text().replace("\r\n", "\n")


@pytest.mark.timeout(240)
async def test_1kib_over_con01_vnc_console(console: ConsoleVm) -> None:
    events, expected = mixed_text(control_keys=False, seed=31)
    us = load_layout("us")
    vnc = await VncConsole.open("127.0.0.1", console.vnc_port, _password(console), timeout_s=30)
    try:
        assert vnc.extended_keys
        await wait_for_text(vnc.screenshot, "BusyBox", timeout_s=60)
        offset = len(_serial(console))
        await vnc.send(us.events_for_text("stty -echo; cat > /dev/ttyS0\n"), pace_s=PACE_S)
        await vnc.send(events, pace_s=PACE_S)
        await vnc.send(us.events_for_text(f"\n{END}\n"), pace_s=PACE_S)
        await await_until(lambda: END in _serial(console)[offset:], 60, "the typed text on the serial port")
        await vnc.send(hold([LEFT_CTRL], us.events_for_text("d")), pace_s=PACE_S)
    finally:
        await vnc.close()
    assert _serial(console)[offset:].partition(f"\n{END}")[0] == expected.decode()
