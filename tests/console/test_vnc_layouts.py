"""Keyboard layouts over VNC: with the X session's keyboard set to de or fr, text typed
from that layout's key events arrives exactly, AltGr characters included.

Extended key events are raw scan codes, so the session's layout decides what they type;
keysyms are mapped to keys by the server, with the Shift and AltGr the events carry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from beachhead.plugins.keyboard import load_layout
from beachhead.plugins.vnc_client import RfbClient
from beachhead.plugins.vnc_console import VncConsole
from tests.console.vnc_peers import HOST, XvncPeer
from tests.console.vnc_typing import type_into_xterm

TEXTS = {
    # y/z swapped, umlauts, AltGr's @{}[]\|~€µ. Not ^, ` or the acute accent: on the default de variant
    # those keys are dead keys, typed as dead key + space, which this xterm does not compose.
    "de": 'Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.\nyzYZ@{}[]\\|~<>#"€µ°§$%&/()=?\n',
    # AZERTY letters and digits (Shift), accented letters on their own keys, AltGr's ~#{[|`\^@]}.
    # Not ¨: on the default fr variant it is the dead diaeresis (typed twice), not composed here.
    "fr": "Portez ce vieux whisky au juge blond qui fume.\nazqwAZQW&é\"'(-è_çà)=~#{[|`\\^@]}£µ§ù*%!:;,?./123\n",
}


@pytest.fixture
def layout(request: pytest.FixtureRequest, xvnc_peer: XvncPeer) -> Iterator[str]:
    """The X session's keyboard set to the test's layout for its duration."""
    name: str = request.param
    xvnc_peer.set_layout(name)
    yield name
    xvnc_peer.set_layout("us")


@pytest.mark.parametrize("layout", sorted(TEXTS), indirect=True)
@pytest.mark.parametrize("extended_keys", [True, False], ids=["scan-codes", "keysyms"])
async def test_layout_types_exactly(xvnc_peer: XvncPeer, layout: str, extended_keys: bool, tmp_path: Path) -> None:
    text = TEXTS[layout]
    events = load_layout(layout).events_for_text(text)
    client = await RfbClient.connect(
        HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20, extended_keys=extended_keys
    )
    console = VncConsole(client)
    try:
        assert console.extended_keys is extended_keys
        arrived = await type_into_xterm(xvnc_peer, console, events, text.encode(), tmp_path)
    finally:
        await console.close()
    assert arrived.decode("utf-8", "replace") == text


def test_the_texts_need_altgr() -> None:
    altgr = {
        name: [e for e in load_layout(name).events_for_text(TEXTS[name]) if e.key.name == "altGr"] for name in TEXTS
    }
    assert all(altgr.values()), "each text has characters only AltGr types"


@pytest.mark.parametrize("layout", ["fr"], indirect=True)
async def test_keysyms_type_composed_characters_directly(xvnc_peer: XvncPeer, layout: str, tmp_path: Path) -> None:
    # The layout types these with dead keys; over keysyms the server needs no dead key
    # (it maps each keysym to a key itself), so only the composed keysyms go.
    text = "fenêtre âme hôte Noël maïs ¨ Ô\n"
    events = load_layout(layout).events_for_text(text)
    assert any(event.dead for event in events)
    client = await RfbClient.connect(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20, extended_keys=False)
    console = VncConsole(client)
    try:
        arrived = await type_into_xterm(xvnc_peer, console, events, text.encode(), tmp_path)
    finally:
        await console.close()
    assert arrived.decode("utf-8", "replace") == text
