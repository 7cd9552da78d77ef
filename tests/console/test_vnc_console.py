"""The vnc keys backend against TigerVNC's Xvnc on loopback: 1 KiB typed exactly with
extended key events and with keysyms, VNC authentication, screenshots read by OCR."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from beachhead.agent.errors import ChannelError, ChannelUnavailable, StepFailed
from beachhead.plugins.screen_text import TextNotOnScreen, screen_text, wait_for_text
from beachhead.plugins.vnc_client import ENCODING_RAW, RfbClient, xt_keycode
from beachhead.plugins.vnc_console import VncConsole
from tests.console.vnc_peers import HOST, XvncPeer, free_port, start_xvnc
from tests.console.vnc_typing import mixed_text, type_into_xterm

KNOWN_LINE = "Beachhead screen check 4711"
LATE_LINE = "Arrived later 0815"


def test_rfb_keycodes_of_set_1_scan_codes() -> None:
    # rfbproto's own examples: A is 0x1e, Right (0xe0 0x4d) is 0xcd.
    assert xt_keycode(0x1E) == 0x1E
    assert xt_keycode(0xE04D) == 0xCD
    assert xt_keycode(0xE038) == 0xB8  # right Alt, AltGr
    assert xt_keycode(0xE11D) == 0  # Pause's prefix: not encodable


async def test_1kib_with_extended_key_events(xvnc_peer: XvncPeer, tmp_path: Path) -> None:
    events, expected = mixed_text()
    console = await VncConsole.open(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20)
    try:
        assert console.extended_keys, "TigerVNC acknowledges the QEMU extended key event pseudo-encoding"
        arrived = await type_into_xterm(xvnc_peer, console, events, expected, tmp_path)
    finally:
        await console.close()
    assert len(expected) >= 1024
    assert arrived == expected


async def test_1kib_with_keysyms(xvnc_peer: XvncPeer, tmp_path: Path) -> None:
    events, expected = mixed_text(seed=13)
    client = await RfbClient.connect(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20, extended_keys=False)
    console = VncConsole(client)
    try:
        assert not console.extended_keys
        arrived = await type_into_xterm(xvnc_peer, console, events, expected, tmp_path)
    finally:
        await console.close()
    assert arrived == expected


async def test_wrong_password_fails_clearly(xvnc_peer: XvncPeer) -> None:
    wrong = "Wr0ngPw"
    with pytest.raises(ChannelError, match="VNC authentication failed: wrong password") as caught:
        await VncConsole.open(HOST, xvnc_peer.port, wrong, timeout_s=20)
    assert wrong not in str(caught.value)
    assert xvnc_peer.password not in str(caught.value)
    assert not isinstance(caught.value, ChannelUnavailable)


@pytest.mark.parametrize("newest", [3, 7, 8])
async def test_older_protocol_versions(xvnc_peer: XvncPeer, newest: int) -> None:
    client = await RfbClient.connect(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20, newest=newest)
    try:
        assert client.init.version == (3, newest)
        assert client.extended_keys
    finally:
        await client.close()
    with pytest.raises(ChannelError, match="VNC authentication failed: wrong password"):
        await RfbClient.connect(HOST, xvnc_peer.port, "Wr0ngPw", timeout_s=20, newest=newest)


async def test_no_password_when_one_is_wanted(xvnc_peer: XvncPeer) -> None:
    with pytest.raises(ChannelError, match="wants a VNC password"):
        await VncConsole.open(HOST, xvnc_peer.port, None, timeout_s=20)


async def test_security_type_none(tmp_path: Path) -> None:
    peer = start_xvnc(tmp_path, security="None")
    try:
        console = await VncConsole.open(HOST, peer.port, None, timeout_s=20)
        await console.close()
        # A password the server does not ask for is not needed.
        console = await VncConsole.open(HOST, peer.port, "unused", timeout_s=20)
        await console.close()
    finally:
        peer.stop()


async def test_nothing_listening_is_unavailable() -> None:
    with pytest.raises(ChannelUnavailable, match="cannot connect"):
        await VncConsole.open(HOST, free_port(), None, timeout_s=5)


async def test_screenshot_shows_what_the_xterm_printed(xvnc_peer: XvncPeer, tmp_path: Path) -> None:
    shown = tmp_path / "shown"
    xterm = xvnc_peer.xterm(f"echo '{KNOWN_LINE}'; : > {shown}; exec sleep 600", name="known")
    console = await VncConsole.open(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20)
    try:
        await wait_for_text(console.screenshot, KNOWN_LINE, timeout_s=30)
        png = await console.screenshot()
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG"
            assert image.size == (1024, 768)
        assert KNOWN_LINE in await screen_text(png)
        assert console.client.rectangles[ENCODING_RAW], "TigerVNC has no Zlib: the picture comes raw"
    finally:
        await console.close()
        xterm.kill()
        xterm.wait(timeout=10)


async def test_wait_for_text_sees_text_appear_and_times_out(xvnc_peer: XvncPeer) -> None:
    xterm = xvnc_peer.xterm(f"echo '{KNOWN_LINE}'; sleep 2; echo '{LATE_LINE}'; exec sleep 600", name="late")
    console = await VncConsole.open(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20)
    try:
        await wait_for_text(console.screenshot, LATE_LINE, timeout_s=30, interval_s=0.2)
        with pytest.raises(TextNotOnScreen) as caught:
            await wait_for_text(console.screenshot, "Never on this screen", timeout_s=3)
        assert isinstance(caught.value, StepFailed)
        assert isinstance(caught.value, TimeoutError)
        assert LATE_LINE in str(caught.value), "the error quotes what the screen showed"
        assert LATE_LINE in caught.value.screen_text
    finally:
        await console.close()
        xterm.kill()
        xterm.wait(timeout=10)
