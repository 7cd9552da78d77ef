"""The rdp console backend (plugins/rdp_console.py) against real RDP servers on
loopback: Debian's xrdp 0.9 (xorgxrdp) and FreeRDP 2's X11 shadow server, each showing
an xterm whose shell appends what is typed to a file."""

from __future__ import annotations

import asyncio
import io
import random
import string
import time

import pytest
from PIL import Image

from beachhead.agent.errors import ChannelUnavailable
from beachhead.plugins.keyboard import load_layout
from beachhead.plugins.rdp_console import RdpConsole
from tests.console.rdp_peers import HOST, RdpPeer, free_port

ARRIVAL_TIMEOUT_S = 30.0


def mixed_text(size: int = 1024, seed: int = 12) -> str:
    """``size`` characters of letters, digits, shifted symbols, punctuation, spaces and
    newlines (ending with one: the shell's ``cat`` writes whole lines)."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "      "
    chars = [rng.choice(alphabet) if i % 64 != 63 else "\n" for i in range(size - 1)]
    return "".join(chars) + "\n"


async def arrived(peer: RdpPeer, expected: str, timeout: float = ARRIVAL_TIMEOUT_S) -> str:
    """What the peer's file holds once it is as long as ``expected`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    text = peer.text()
    while len(text) < len(expected) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        text = peer.text()
    return text


async def open_ready(peer: RdpPeer, **options: object) -> RdpConsole:
    """A console to ``peer`` whose session reads the keyboard: a probe line typed (again
    every half second, a fresh session needs a moment) has reached the file, which is
    then emptied."""
    console = await RdpConsole.open(HOST, peer.port, peer.username, peer.password, timeout_s=20, **options)  # type: ignore[arg-type]
    probe = load_layout("us").events_for_text("probe\n")
    deadline = time.monotonic() + 20
    while "probe" not in peer.text():
        if time.monotonic() > deadline:
            await console.close()
            pytest.fail(f"the session never read the keyboard: {peer.log_text()}")
        await console.send(probe)
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.3)
    peer.clear()
    return console


@pytest.mark.parametrize("security", ["tls", "rdp"])
async def test_xrdp_types_1_kib_exactly(xrdp_peer: RdpPeer, security: str) -> None:
    text = mixed_text()
    console = await open_ready(xrdp_peer, security=security)
    try:
        await console.send(load_layout("us").events_for_text(text))
        assert await arrived(xrdp_peer, text) == text
    finally:
        await console.close()


async def test_freerdp_shadow_types_1_kib_exactly(shadow_peer: RdpPeer) -> None:
    # TLS only: the shadow server as started here has no RSA server certificate for
    # standard RDP security (aardwolf fails "'NoneType' object has no attribute 'encrypt'").
    text = mixed_text(seed=13)
    console = await open_ready(shadow_peer, security="tls")
    try:
        await console.send(load_layout("us").events_for_text(text))
        assert await arrived(shadow_peer, text) == text
    finally:
        await console.close()


async def test_xrdp_unicode_input(xrdp_peer: RdpPeer) -> None:
    # xrdp turns a Unicode event into the key its session layout has for the character
    # (its km-*.ini), so the text is what the layout can type; newlines go as keys.
    text = mixed_text(256, seed=14)
    console = await open_ready(xrdp_peer)
    try:
        await console.send_text_unicode(text)
        assert await arrived(xrdp_peer, text) == text
    finally:
        await console.close()


async def test_xrdp_german_layout_with_altgr(xrdp_peer: RdpPeer) -> None:
    text = 'yz@{}[]\\|<>~#"\n'
    german = load_layout("de")
    events = german.events_for_text(text)
    assert any(event.key.name == "altGr" for event in events)
    # The same keys typed as a US keyboard would give other characters: the layout the
    # console announces decides.
    console = await open_ready(xrdp_peer, layout_id=german.windows_layout_id)
    try:
        await console.send(events)
        assert await arrived(xrdp_peer, text) == text
    finally:
        await console.close()


# Characters only the default variants' dead keys type (dead key + letter; ^ and ` as
# dead key + space, ¨ as the dead diaeresis twice), each line ending in a plain letter.
DEAD_KEY_TEXTS = {"fr": "fenêtre âme hôte Noël maïs ¨ Ô x\n", "de": "fenêtre âme hôte café à la ^2 `x` x\n"}


@pytest.mark.parametrize("name", sorted(DEAD_KEY_TEXTS))
async def test_xrdp_dead_keys(xrdp_peer: RdpPeer, name: str) -> None:
    text = DEAD_KEY_TEXTS[name]
    layout = load_layout(name)
    events = layout.events_for_text(text)
    assert any(event.dead for event in events)
    console = await open_ready(xrdp_peer, layout_id=layout.windows_layout_id)
    try:
        await console.send(events)
        await arrived(xrdp_peer, text)
    finally:
        await console.close()
    # The session's xterm composes the dead keys (libX11's Compose) and, in the C
    # locale, writes Latin-1.
    assert xrdp_peer.typed.read_bytes() == text.encode("latin-1")


async def test_screenshot_shows_the_typed_text(xrdp_peer: RdpPeer) -> None:
    console = await open_ready(xrdp_peer)
    try:
        await console.send(load_layout("us").events_for_text("screenshot text\n"))
        await arrived(xrdp_peer, "screenshot text\n")
        deadline = time.monotonic() + 10
        while True:
            image = Image.open(io.BytesIO(await console.screenshot()))
            colours = image.getcolors(maxcolors=1 << 16)
            if colours is None or len(colours) > 1 or time.monotonic() > deadline:
                break
            await console.wait_for_update(1)
        assert image.format == "PNG"
        assert image.size == console.size == (1024, 768)
        assert colours is None or len(colours) > 1, "the screen is one colour"
    finally:
        await console.close()


async def test_nothing_listening_is_channel_unavailable() -> None:
    with pytest.raises(ChannelUnavailable) as caught:
        await RdpConsole.open(HOST, free_port(), "nobody", "wrong", timeout_s=5)
    assert caught.value.channel == "rdp"
