"""The VNC backend of the ``keys`` channel: key events typed over RFB, the screen read back.

Keys go as QEMU extended key events (raw XT scan codes, which the server hands to the
guest's keyboard as they are, so the guest's layout decides what they type) when the
server acknowledged that pseudo-encoding, and as keysyms otherwise. Either way Shift,
AltGr and the other modifiers are pressed and released exactly as the events carry them:
QEMU's keysym path would otherwise type ``!`` as ``1``.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

from PIL import Image

from beachhead.plugins.keyboard import KeyEvent
from beachhead.plugins.vnc_client import RfbClient, xt_keycode

SCREENSHOT_TIMEOUT_S = 30


class VncConsole:
    """An open VNC console: :meth:`send` types, :meth:`screenshot` shows the screen."""

    def __init__(self, client: RfbClient) -> None:
        self._client = client

    @classmethod
    async def open(cls, host: str, port: int, password: str | None, *, timeout_s: float = 30) -> VncConsole:
        """Connect to the VNC server at ``host:port`` (VNC Authentication with
        ``password`` when the server asks for it), bounded by ``timeout_s``. Raises
        :class:`~beachhead.agent.errors.ChannelUnavailable` when nothing answers and
        :class:`~beachhead.agent.errors.ChannelError` when the password is refused."""
        return cls(await RfbClient.connect(host, port, password, timeout_s=timeout_s))

    @property
    def client(self) -> RfbClient:
        """The RFB connection (its framebuffer, what the server sent)."""
        return self._client

    @property
    def extended_keys(self) -> bool:
        """True when keys go as raw scan codes (the server offered QEMU's extended key event)."""
        return self._client.extended_keys

    @property
    def endpoint(self) -> str:
        """``host:port`` of the server, for messages."""
        return self._client.endpoint

    async def send(self, events: Sequence[KeyEvent], pace_s: float = 0.0) -> None:
        """Type ``events`` in order; with ``pace_s`` > 0 each is handed to the kernel and
        followed by that pause, else all are written at once and drained at the end."""
        client = self._client
        for event in events:
            keycode = xt_keycode(event.key.scancode) if client.extended_keys else 0
            if event.dead and not keycode:
                continue  # a keysym server types the composed character's keysym itself
            if keycode:
                client.extended_key(event.keysym, keycode, event.down)
            else:
                client.key(event.keysym, event.down)
            if pace_s > 0:
                await client.drain()
                await asyncio.sleep(pace_s)
        await client.drain()

    async def screenshot(self) -> bytes:
        """The screen as it is now, as a PNG (the whole framebuffer asked for afresh)."""
        client = self._client
        await client.refresh(timeout_s=SCREENSHOT_TIMEOUT_S)
        size, pixels = (client.width, client.height), bytes(client.pixels)
        return await asyncio.to_thread(_png, size, pixels)

    async def close(self) -> None:
        """Close the connection."""
        await self._client.close()


def _png(size: tuple[int, int], pixels: bytes) -> bytes:
    image = Image.frombuffer("RGB", size, pixels, "raw", "BGRX", 0, 1)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
