"""An RDP console client: the ``rdp`` backend of the ``keys`` channel.

:class:`RdpConsole` opens an RDP session with aardwolf, as corrected by
:mod:`beachhead.plugins.rdp_compat` (aardwolf 0.2.16 only), to a Windows guest or any
RDP server: TLS or standard RDP security (no NLA), bulk compression off,
``INFO_AUTOLOGON`` with the target's Windows credentials, and the keyboard layout it
announces (a Windows KLID such as 0x409 us, 0x407 de, 0x40C fr, 0x809 uk) so the
server's session maps scan codes as that layout does. It types
:class:`~beachhead.plugins.keyboard.KeyEvent` sequences as scan codes (PC set-1 make
codes, extended keys flagged) or text as Unicode keyboard events, and keeps the
screen, drawn from the server's bitmap updates (fast-path and slow-path), for
:meth:`RdpConsole.screenshot` (PNG).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Sequence
from typing import Any

from PIL import Image

from beachhead.agent.errors import ChannelError, ChannelUnavailable, InputError
from beachhead.plugins import rdp_compat
from beachhead.plugins.keyboard import KeyEvent

CHANNEL = "rdp"
SECURITIES = ("tls", "rdp")
#: Desktop size asked for; servers may answer with another (the screenshot follows it).
DEFAULT_SIZE = (1024, 768)
CLOSE_TIMEOUT_S = 3.0
# A key event the server does not take within this long (a stalled or refused session
# whose socket no longer drains) fails the send instead of waiting for ever.
SEND_TIMEOUT_S = 10.0
#: Characters a Unicode event does not type in a terminal: sent as their keys instead.
_UNICODE_AS_SCANCODE = {"\n": 0x1C, "\r": 0x1C, "\t": 0x0F}
# MS-RDPBCGR 2.2.8.1.1.1.1 / 2.2.9.1.1.3: a Data PDU (pduType 7) whose pduType2 is
# Update (2) and whose updateType is Bitmap (1).
_PDUTYPE_DATA, _PDUTYPE2_UPDATE, _UPDATETYPE_BITMAP = 7, 0x02, 0x0001


class RdpConsole:
    """One RDP session used as a console (keyboard in, screen out)."""

    def __init__(self, connection: Any, target: str, size: tuple[int, int]) -> None:
        self._connection = connection
        self._target = target
        self._screen = Image.new("RGB", size)
        self._updated = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        domain: str = "",
        layout_id: int = 0x409,
        security: str = "tls",
        timeout_s: float = 30,
    ) -> RdpConsole:
        """Connect and log on; return once the session is active. Raises
        :class:`ChannelUnavailable` when no session could be made (refused, timed out,
        rejected by the server) and :class:`InputError` for an unknown ``security``."""
        if security not in SECURITIES:
            raise InputError(None, "rdp security", f"{security!r} is not one of {', '.join(SECURITIES)}")
        from aardwolf.commons.target import RDPTarget
        from aardwolf.protocol.x224.constants import SUPP_PROTOCOLS
        from asyauth.common.constants import asyauthProtocol, asyauthSecret
        from asyauth.common.credentials import UniCredential

        target = f"{host}:{port}"
        connection_class = rdp_compat.connection_class()
        protocols = SUPP_PROTOCOLS.SSL if security == "tls" else SUPP_PROTOCOLS.RDP
        settings = rdp_compat.io_settings(
            width=DEFAULT_SIZE[0], height=DEFAULT_SIZE[1], layout_id=layout_id, protocols=protocols
        )
        credential = UniCredential(
            secret=password,
            username=username,
            domain=domain,
            stype=asyauthSecret.PASSWORD,
            protocol=asyauthProtocol.PLAIN,
        )
        # RDP servers' certificates are self-signed as a rule; the console trusts the
        # address it was given (NLA, which would bind the credentials, is not offered).
        rdp_target = RDPTarget(ip=host, port=port, timeout=max(int(timeout_s), 1), unsafe_ssl=True)
        connection = connection_class(rdp_target, credential, settings)
        try:
            _, error = await asyncio.wait_for(connection.connect(), timeout_s)
        except TimeoutError:
            raise ChannelUnavailable(CHANNEL, target, f"no RDP session within {timeout_s:g}s", retryable=True) from None
        except OSError as error:
            raise ChannelUnavailable(CHANNEL, target, str(error) or type(error).__name__, retryable=True) from None
        if error is not None:
            retryable = isinstance(error, OSError)
            raise ChannelUnavailable(CHANNEL, target, f"RDP connection failed: {error}", retryable=retryable) from None
        console = cls(connection, target, (settings.video_width, settings.video_height))
        console._tasks = [
            asyncio.create_task(console._read_fast_path()),
            asyncio.create_task(console._read_slow_path()),
        ]
        return console

    # -- input ----------------------------------------------------------------------
    async def send(self, events: Sequence[KeyEvent], pace_s: float = 0.0) -> None:
        """Send ``events`` as scan-code keyboard events, in order, ``pace_s`` apart."""
        for event in events:
            scancode = event.key.scancode
            await self._check(
                self._connection.send_key_scancode(scancode & 0xFF, event.down, scancode > 0xFF), "key event"
            )
            if pace_s:
                await asyncio.sleep(pace_s)

    async def send_text_unicode(self, text: str, pace_s: float = 0.0) -> None:
        """Type ``text`` as Unicode keyboard events (each character down and up; only
        the Basic Multilingual Plane); newline and tab as their keys, which terminals
        need. FreeRDP's X11 shadow server ignores Unicode events."""
        for char in text:
            if char in _UNICODE_AS_SCANCODE:
                for down in (True, False):
                    await self._check(
                        self._connection.send_key_scancode(_UNICODE_AS_SCANCODE[char], down, False), "key event"
                    )
            elif ord(char) > 0xFFFF:
                # aardwolf encodes one UTF-16 unit per event and cannot send a surrogate.
                raise InputError(
                    None, "text", f"{char!r} (U+{ord(char):04X}) is outside the BMP: no RDP Unicode event types it"
                )
            else:
                for down in (True, False):
                    await self._check(self._connection.send_key_char(char, down), "Unicode event")
            if pace_s:
                await asyncio.sleep(pace_s)

    async def _check(self, sending: Any, what: str) -> None:
        if self._closed or self._connection.disconnected_evt.is_set():
            sending.close()
            raise ChannelError(CHANNEL, self._target, "the RDP session has ended", retryable=True)
        try:
            _, error = await asyncio.wait_for(sending, SEND_TIMEOUT_S)
        except TimeoutError:
            raise ChannelError(
                CHANNEL, self._target, f"the RDP server took no {what} within {SEND_TIMEOUT_S:g}s", retryable=True
            ) from None
        if error is not None:
            raise ChannelError(CHANNEL, self._target, f"sending a {what} failed: {error}", retryable=True)

    # -- screen ---------------------------------------------------------------------
    async def screenshot(self) -> bytes:
        """The screen as the server last drew it, as PNG bytes."""
        buffer = io.BytesIO()
        self._screen.save(buffer, format="PNG")
        return buffer.getvalue()

    @property
    def size(self) -> tuple[int, int]:
        """The desktop's width and height in pixels."""
        return self._screen.size

    async def wait_for_update(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the server draws something; True if it did."""
        self._updated.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._updated.wait(), timeout_s)
            return True
        return False

    def _paste(self, x: int, y: int, image: Any) -> None:
        self._screen.paste(image.convert("RGB"), (x, y))
        self._updated.set()

    async def _read_fast_path(self) -> None:
        """Fast-path bitmap updates, which aardwolf decodes and queues."""
        queue = self._connection.ext_out_queue
        while True:
            item = await queue.get()
            if item is None:
                return
            image = getattr(item, "data", None)
            if isinstance(image, Image.Image):
                self._paste(item.x, item.y, image)

    async def _read_slow_path(self) -> None:
        """Slow-path Graphics Update PDUs, which aardwolf leaves on its I/O channel
        queue undecoded (xrdp sends its bitmaps this way)."""
        from aardwolf.protocol.fastpath.bitmap import TS_UPDATE_BITMAP_DATA

        queue = self._connection._RDPConnection__joined_channels["MCS"].out_queue
        while True:
            data, error = await queue.get()
            if error is not None or data is None:
                continue
            payload = bitmap_update_payload(data)
            if payload is None:
                continue
            try:
                update = TS_UPDATE_BITMAP_DATA.from_bytes(payload)
                for rectangle in update.rectangles:
                    video, image = rdp_compat.decode_bitmap(rectangle)
                    self._paste(video.x, video.y, image)
            except Exception:  # noqa: S112 - a rectangle aardwolf cannot decode leaves the old pixels
                continue

    # -- end ------------------------------------------------------------------------
    async def close(self) -> None:
        """End the session (the connection; a server that kills disconnected sessions
        ends the session too)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # aardwolf's terminate() sends a Shutdown Request and waits for the answer,
        # which not every server gives: bound it, the transport is closed either way.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._connection.terminate(), CLOSE_TIMEOUT_S)

    async def __aenter__(self) -> RdpConsole:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def bitmap_update_payload(data: bytes) -> bytes | None:
    """The TS_UPDATE_BITMAP_DATA of a slow-path Bitmap Update PDU (MS-RDPBCGR
    2.2.9.1.1.3.1.2), or None for any other PDU. ``data`` starts with the Share Control
    Header, or with a 4-byte basic security header before it (standard RDP security
    with unencrypted server data)."""
    for offset in (0, 4):
        pdu = data[offset:]
        if len(pdu) < 20 or int.from_bytes(pdu[:2], "little") != len(pdu):
            continue
        if int.from_bytes(pdu[2:4], "little") & 0x0F != _PDUTYPE_DATA or pdu[14] != _PDUTYPE2_UPDATE:
            return None
        payload = pdu[18:]
        return payload if int.from_bytes(payload[:2], "little") == _UPDATETYPE_BITMAP else None
    return None
