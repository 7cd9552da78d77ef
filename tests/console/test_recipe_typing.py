"""Every shipped recipe types exactly over the keys channel: compiled for the us layout
and typed through the vnc backend into an xterm on TigerVNC's Xvnc (loopback), what
arrives is the recipe's text byte for byte. (No Windows here: this is all that is
checked of ``windows/enable-winrm``.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from beachhead.plugins.boot_command import Keys, compile_tokens, parse
from beachhead.plugins.keyboard import load_layout
from beachhead.plugins.recipes import available, load_recipe
from beachhead.plugins.vnc_console import VncConsole
from tests.console.vnc_peers import HOST, XvncPeer
from tests.console.vnc_typing import type_into_xterm

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeachheadTestKeyOnly test"


@pytest.mark.parametrize("name", available())
async def test_recipe_types_exactly(name: str, xvnc_peer: XvncPeer, tmp_path: Path) -> None:
    params = {"authorized_key": KEY} if name.startswith("linux/") else {}
    text = load_recipe(name, params, "w").render("127.0.0.7")
    actions = compile_tokens(parse(text, where="w"), load_layout("us"), where="w")
    assert all(isinstance(action, Keys) for action in actions)  # no waits: all typed
    events = [event for action in actions if isinstance(action, Keys) for event in action.events]
    expected = text.replace("<enter>", "\n").encode()
    console = await VncConsole.open(HOST, xvnc_peer.port, xvnc_peer.password, timeout_s=20)
    try:
        arrived = await type_into_xterm(xvnc_peer, console, events, expected, tmp_path)
    finally:
        await console.close()
    assert arrived == expected
