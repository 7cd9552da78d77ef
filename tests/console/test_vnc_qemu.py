"""The vnc keys backend against QEMU's own VNC server in front of the lab's console VM
(one boot for the session: ``booted``, tests/console/conftest.py): the handshake with a
password, the extended key event acknowledgement, the framebuffer after the guest's mode
change, and 1 KiB typed into its shell, read back from its serial port."""

from __future__ import annotations

import difflib
import io
from pathlib import Path

import pytest
from PIL import Image

from beachhead.agent.errors import ChannelError
from beachhead.plugins.keyboard import LEFT_CTRL, hold, load_layout
from beachhead.plugins.screen_text import wait_for_text
from beachhead.plugins.vnc_client import ENCODING_ZLIB, RfbClient
from beachhead.plugins.vnc_console import VncConsole
from tests.conftest import await_until
from tests.console.vnc_peers import HOST, QemuPeer, start_qemu
from tests.console.vnc_typing import mixed_text

# QEMU's input queue drops keys when flooded; with key-delay-ms=0 a millisecond a key
# event lost none here (console-facts.md); twice that leaves room for a loaded machine.
PACE_S = 0.002
END = "END-OF-TYPING"


async def _serial_after(peer: QemuPeer, offset: int, marker: str) -> str:
    await await_until(lambda: marker in _serial(peer)[offset:], 60, f"{marker!r} on the serial port")
    return _serial(peer)[offset:]


def _serial(peer: QemuPeer) -> str:
    return peer.serial.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n")


async def test_handshake_extended_keys_and_framebuffer(booted: QemuPeer) -> None:
    console = await VncConsole.open(HOST, booted.port, booted.password, timeout_s=20)
    try:
        assert console.extended_keys, "QEMU acknowledges the QEMU extended key event pseudo-encoding"
        assert console.client.rectangles[ENCODING_ZLIB], "QEMU sends the picture zlib-compressed"
        await wait_for_text(console.screenshot, "BusyBox", timeout_s=30)  # light on dark: inverted for OCR
        with Image.open(io.BytesIO(await console.screenshot())) as image:
            assert image.size == (720, 400), "the VGA text mode, after QEMU's DesktopSize change"
    finally:
        await console.close()


async def test_wrong_password(booted: QemuPeer) -> None:
    with pytest.raises(ChannelError, match="VNC authentication failed") as caught:
        await VncConsole.open(HOST, booted.port, "nope1234", timeout_s=20)
    assert "nope1234" not in str(caught.value)
    assert booted.password is not None and booted.password not in str(caught.value)


@pytest.mark.parametrize("extended_keys", [True, False], ids=["scan-codes", "keysyms"])
async def test_1kib_typed_into_the_guest(booted: QemuPeer, extended_keys: bool) -> None:
    events, expected = mixed_text(control_keys=False, seed=21 if extended_keys else 22)
    text = expected.decode()
    us = load_layout("us")
    client = await RfbClient.connect(HOST, booted.port, booted.password, timeout_s=20, extended_keys=extended_keys)
    console = VncConsole(client)
    try:
        offset = len(_serial(booted))
        # The shell's tty copies each line to the serial port; then the marker ends it.
        await console.send(us.events_for_text("stty -echo; cat > /dev/ttyS0\n"), pace_s=PACE_S)
        await console.send(events, pace_s=PACE_S)
        await console.send(us.events_for_text(f"\n{END}\n"), pace_s=PACE_S)
        arrived = await _serial_after(booted, offset, END)
        await console.send(hold([LEFT_CTRL], us.events_for_text("d")), pace_s=PACE_S)  # cat ends: the shell again
        await console.send(us.events_for_text("stty echo\n"), pace_s=PACE_S)  # as the next test expects it
    finally:
        await console.close()
    got = arrived.partition(f"\n{END}")[0]
    assert got == text, "".join(difflib.unified_diff(text.splitlines(True), got.splitlines(True), "typed", "arrived"))


async def test_qemu_without_a_password_needs_none(tmp_path: Path) -> None:
    peer = start_qemu(tmp_path, password=False, boot=False)
    try:
        console = await VncConsole.open(HOST, peer.port, None, timeout_s=20)
        try:
            assert console.extended_keys
            assert (await console.screenshot()).startswith(b"\x89PNG")
        finally:
            await console.close()
    finally:
        peer.stop()
