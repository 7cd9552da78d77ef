"""Helpers of the vnc console tests: a 1 KiB mixed text with the bytes it must produce,
and typing into an Xvnc xterm whose shell writes what arrives to a file."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from beachhead.plugins.keyboard import LEFT_CTRL, NAMED_KEYS, KeyEvent, hold, load_layout, press
from beachhead.plugins.vnc_console import VncConsole
from tests.conftest import await_until
from tests.console.vnc_peers import RAW_INPUT, XvncPeer

# What xterm sends for named keys (measured), in a shell with RAW_INPUT (Enter is \n: icrnl).
KEY_BYTES = {
    "tab": b"\t",
    "esc": b"\x1b",
    "bs": b"\x7f",
    "up": b"\x1b[A",
    "down": b"\x1b[B",
    "left": b"\x1b[D",
    "right": b"\x1b[C",
    "home": b"\x1b[H",
    "end": b"\x1b[F",
    "del": b"\x1b[3~",
    "f1": b"\x1bOP",
    "f5": b"\x1b[15~",
}
# Ctrl+letter types the letter's control byte; not m (\r becomes \n), o, v (the tty's own).
CTRL_LETTERS = "abdefgklntuwxy"
PRINTABLE = "".join(chr(code) for code in range(0x20, 0x7F))


def mixed_text(size: int = 1024, *, control_keys: bool = True, seed: int = 12) -> tuple[list[KeyEvent], bytes]:
    """Key events for ``size`` bytes of mixed text (every printable ASCII character,
    shifted ones included, newlines, and with ``control_keys`` named keys and Ctrl
    combinations), and the bytes they must produce."""
    rng = random.Random(seed)
    us = load_layout("us")
    events: list[KeyEvent] = []
    expected = bytearray()
    while len(expected) < size:
        roll = rng.random()
        if roll < 0.04:
            char = "\n"
        elif control_keys and roll < 0.08:
            name = rng.choice(sorted(KEY_BYTES))
            events += press(NAMED_KEYS[name])
            expected += KEY_BYTES[name]
            continue
        elif control_keys and roll < 0.10:
            letter = rng.choice(CTRL_LETTERS)
            events += hold([LEFT_CTRL], us.events_for_text(letter))
            expected.append(ord(letter) - ord("a") + 1)
            continue
        else:
            char = rng.choice(PRINTABLE)
        events += us.events_for_text(char)
        expected += char.encode()
    return events, bytes(expected)


async def type_into_xterm(
    peer: XvncPeer, console: VncConsole, events: list[KeyEvent], expected: bytes, directory: Path
) -> bytes:
    """Type ``events`` into a fresh xterm and return the bytes its shell received
    (waiting, bounded, for as many as ``expected`` has)."""
    typed = directory / "typed"
    typed.unlink(missing_ok=True)
    xterm = peer.xterm(f"{RAW_INPUT}; exec cat > {typed}", name=directory.name)
    try:
        await await_until(typed.exists, 20, "the xterm's shell")
        # The window takes the keyboard once it is mapped: Enter until one arrives.
        newline = press(NAMED_KEYS["enter"])
        for _ in range(50):
            await console.send(newline)
            if typed.stat().st_size:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
        start = typed.stat().st_size
        await console.send(events)
        await await_until(lambda: typed.stat().st_size >= start + len(expected), 30, "the typed bytes")
        await asyncio.sleep(0.2)  # anything extra (a repeated key) would arrive now
        return typed.read_bytes()[start:]
    finally:
        xterm.kill()
        xterm.wait(timeout=10)
