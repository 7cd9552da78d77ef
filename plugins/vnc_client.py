"""A small RFB (VNC) client on asyncio: the handshake, keys in, the framebuffer out.

RFC 6143 (protocol 3.8; 3.7 and 3.3 servers too) with the two security types consoles
offer: None and VNC Authentication (a DES challenge). The client asks for 32-bit true
colour pixels and the Zlib, CopyRect and Raw encodings, plus the DesktopSize and QEMU
Extended Key Event pseudo-encodings. A server that honours the latter acknowledges it
with a pseudo-rectangle; from then on keys can go as raw XT scan codes (QEMU's extended
key event, rfbproto's "QEMU Client Message" 255/0), which the server feeds to the
guest's keyboard as they are, whatever layout either side uses.

asyncvnc (the asyncio client on PyPI) and vncdotool (Twisted) were measured and found
wanting for typing (no explicit Shift, no drain, no extended key events; ~5,000 c/s),
so this module does the little RFB that typing and screenshots need.

One task reads everything the server sends, so its messages never back up:
framebuffer updates are decoded into :attr:`RfbClient.pixels`, Bell and ServerCutText
are noted, SetColourMapEntries is read past (true colour needs no map). Updates are
only asked for by :meth:`RfbClient.refresh`, so between screenshots nothing but keys
crosses the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from beachhead.agent.errors import ChannelError, ChannelUnavailable

CHANNEL = "vnc"

# Security types (RFC 6143 7.1.2).
SECURITY_INVALID, SECURITY_NONE, SECURITY_VNC_AUTH = 0, 1, 2
SECURITY_NAMES = {1: "None", 2: "VNC Authentication", 16: "Tight", 18: "TLS", 19: "VeNCrypt", 30: "Apple ARD"}

# Encodings and pseudo-encodings, in order of preference.
ENCODING_RAW, ENCODING_COPY_RECT, ENCODING_ZLIB = 0, 1, 6
PSEUDO_DESKTOP_SIZE = -223
PSEUDO_QEMU_EXTENDED_KEY_EVENT = -258
ENCODINGS = (ENCODING_ZLIB, ENCODING_COPY_RECT, ENCODING_RAW, PSEUDO_DESKTOP_SIZE, PSEUDO_QEMU_EXTENDED_KEY_EVENT)

# Client and server message types.
SET_PIXEL_FORMAT, SET_ENCODINGS, FRAMEBUFFER_UPDATE_REQUEST, KEY_EVENT = 0, 2, 3, 4
QEMU_CLIENT_MESSAGE, QEMU_EXTENDED_KEY_EVENT = 255, 0
FRAMEBUFFER_UPDATE, SET_COLOUR_MAP_ENTRIES, BELL, SERVER_CUT_TEXT = 0, 1, 2, 3

BYTES_PER_PIXEL = 4
# 32 bits per pixel, depth 24, little-endian, true colour, 8 bits a channel with red in
# bits 16-23, green 8-15, blue 0-7: the bytes in memory are B, G, R, unused (Pillow's "BGRX").
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)

MAX_REASON = 4096  # longest failure reason or desktop name read from a server
MAX_CUT_TEXT = 1 << 20  # longest clipboard text kept; longer is read past
MAX_DIMENSION = 16384  # a framebuffer larger than this is a broken server, not a screen
_VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


@dataclass(frozen=True)
class ServerInit:
    """What the server said about itself: protocol version, desktop name and size."""

    version: tuple[int, int]
    name: str
    width: int
    height: int


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The VNC Authentication response to ``challenge``: the 16 bytes DES-encrypted with
    the password's first 8 bytes (zero-padded) as the key, each key byte's bits
    reversed (RFB's historical quirk)."""
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode("utf-8")[:8].ljust(8, b"\0"))
    # Single DES is three-key 3DES with three equal keys (the one DES-capable cipher left).
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 (the protocol's own)
    return encryptor.update(challenge) + encryptor.finalize()


def xt_keycode(scancode: int) -> int:
    """The RFB keycode of a set-1 make code: single bytes as they are, ``0xE0xx`` as
    ``0x80 | xx`` (rfbproto's QEMU Extended Key Event encoding); 0 for codes it cannot
    encode (``0xE1`` sequences, codes of 0x80 and up)."""
    if scancode < 0x80:
        return scancode
    if scancode >> 8 == 0xE0 and scancode & 0xFF < 0x80:
        return 0x80 | (scancode & 0x7F)
    return 0


class RfbClient:
    """One RFB connection: keys go out as they are written, the server's messages are
    read by a task of its own into :attr:`pixels` (``width`` by ``height`` BGRX pixels)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: str, init: ServerInit
    ) -> None:
        self.endpoint = endpoint
        self.init = init
        self.width, self.height = init.width, init.height
        self.pixels = bytearray(self.width * self.height * BYTES_PER_PIXEL)
        #: True once the server acknowledged the QEMU Extended Key Event pseudo-encoding.
        self.extended_keys = False
        self.bells = 0
        self.cut_text = ""
        #: How many rectangles of each encoding (and pseudo-encoding) the server sent.
        self.rectangles: Counter[int] = Counter()
        self._reader = reader
        self._writer = writer
        self._inflate = zlib.decompressobj()  # one zlib stream per connection (RFB Zlib encoding)
        self._waiters: list[asyncio.Future[None]] = []
        self._failure: ChannelError | None = None
        self._reading = asyncio.create_task(self._read_messages(), name=f"vnc reader {endpoint}")

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        password: str | None,
        *,
        timeout_s: float = 30,
        extended_keys: bool = True,
        newest: int = 8,
    ) -> RfbClient:
        """Connect, authenticate and set the connection up; then wait for the first whole
        framebuffer, so that :attr:`extended_keys` is known (``extended_keys=False`` does
        not offer QEMU's extended key events, so keys go as keysyms; ``newest`` is the
        newest protocol 3.x to speak, 8, 7 or 3, when the server speaks a newer one). Raises
        :class:`ChannelUnavailable` when no connection could be made in ``timeout_s`` and
        :class:`ChannelError` when the server refused the password or broke the protocol."""
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as err:
            reason = f"no connection within {timeout_s:g}s" if isinstance(err, TimeoutError) else str(err)
            raise ChannelUnavailable(CHANNEL, endpoint, f"cannot connect: {reason}", retryable=True) from None
        try:
            async with asyncio.timeout(timeout_s):
                encodings = tuple(e for e in ENCODINGS if extended_keys or e != PSEUDO_QEMU_EXTENDED_KEY_EVENT)
                init = await _handshake(reader, writer, endpoint, password, encodings, newest)
        except TimeoutError:
            writer.close()
            raise ChannelError(CHANNEL, endpoint, f"no RFB handshake within {timeout_s:g}s", retryable=True) from None
        except (OSError, asyncio.IncompleteReadError) as err:
            writer.close()
            raise ChannelError(CHANNEL, endpoint, f"connection lost during the handshake: {_why(err)}") from None
        except BaseException:
            writer.close()
            raise
        client = cls(reader, writer, endpoint, init)
        try:
            await client.refresh(timeout_s=timeout_s)
        except BaseException:
            await client.close()
            raise
        return client

    def key(self, keysym: int, down: bool) -> None:
        """Queue a KeyEvent (RFC 6143 7.5.4): ``keysym`` pressed or released."""
        self._write(struct.pack(">BBxxI", KEY_EVENT, down, keysym))

    def extended_key(self, keysym: int, keycode: int, down: bool) -> None:
        """Queue a QEMU extended key event: the RFB ``keycode`` (see :func:`xt_keycode`)
        pressed or released, with the ``keysym`` it types for servers that want both."""
        self._write(struct.pack(">BBHII", QEMU_CLIENT_MESSAGE, QEMU_EXTENDED_KEY_EVENT, down, keysym, keycode))

    async def drain(self, timeout_s: float = 30) -> None:
        """Wait until what was queued has been handed to the kernel (bounded)."""
        self._check()
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
        except TimeoutError:
            raise ChannelError(CHANNEL, self.endpoint, f"the server read no keys for {timeout_s:g}s") from None
        except OSError as err:
            raise self._lost(err) from None

    async def refresh(self, *, timeout_s: float = 30) -> None:
        """Ask for the whole framebuffer and wait until an update with pixels arrived (the
        server answers a non-incremental request with the whole screen); again when the
        desktop changed size meanwhile."""
        try:
            async with asyncio.timeout(timeout_s):
                for _ in range(3):
                    size = (self.width, self.height)
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    self._write(struct.pack(">BBHHHH", FRAMEBUFFER_UPDATE_REQUEST, 0, 0, 0, *size))
                    await self._writer.drain()
                    await waiter
                    if (self.width, self.height) == size:
                        return
        except TimeoutError:
            raise ChannelError(CHANNEL, self.endpoint, f"no framebuffer update within {timeout_s:g}s") from None
        except OSError as err:
            raise self._lost(err) from None

    async def close(self) -> None:
        """Close the connection and stop reading."""
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChannelError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def _write(self, data: bytes) -> None:
        self._check()
        self._writer.write(data)

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _lost(self, err: BaseException) -> ChannelError:
        if self._failure is None:
            self._failure = ChannelError(CHANNEL, self.endpoint, f"connection lost: {_why(err)}", retryable=True)
        return self._failure

    async def _read_messages(self) -> None:
        try:
            while True:
                kind = (await self._reader.readexactly(1))[0]
                if kind == FRAMEBUFFER_UPDATE:
                    await self._read_update()
                elif kind == SET_COLOUR_MAP_ENTRIES:
                    _first, count = struct.unpack(">xHH", await self._reader.readexactly(5))
                    await self._reader.readexactly(6 * count)
                elif kind == BELL:
                    self.bells += 1
                elif kind == SERVER_CUT_TEXT:
                    (length,) = struct.unpack(">3xI", await self._reader.readexactly(7))
                    text = await _read_bounded(self._reader, length, MAX_CUT_TEXT)
                    self.cut_text = text.decode("latin-1")
                else:
                    raise _ProtocolError(f"unknown server message type {kind}")
        except asyncio.CancelledError:
            raise
        except _ProtocolError as err:
            self._failure = ChannelError(CHANNEL, self.endpoint, f"protocol error: {err}")
        except (OSError, asyncio.IncompleteReadError, zlib.error) as err:
            self._lost(err)
        except (struct.error, ValueError) as err:
            self._failure = ChannelError(CHANNEL, self.endpoint, f"protocol error: {err}")
        failure = self._failure
        for waiter in self._waiters:
            if not waiter.done() and failure is not None:
                waiter.set_exception(failure)
        self._waiters.clear()

    async def _read_update(self) -> None:
        # Waiters that asked before this update began are answered by it (if it has pixels).
        answered = len(self._waiters)
        (count,) = struct.unpack(">xH", await self._reader.readexactly(3))
        pixels = False
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self._reader.readexactly(12))
            self.rectangles[encoding] += 1
            if encoding == PSEUDO_QEMU_EXTENDED_KEY_EVENT:
                self.extended_keys = True
                continue
            if encoding == PSEUDO_DESKTOP_SIZE:
                self._resize(w, h)
                continue
            if x + w > self.width or y + h > self.height:
                raise _ProtocolError(f"rectangle {w}x{h}+{x}+{y} outside the {self.width}x{self.height} screen")
            if encoding == ENCODING_RAW:
                self._put(x, y, w, h, await self._reader.readexactly(w * h * BYTES_PER_PIXEL))
            elif encoding == ENCODING_ZLIB:
                (length,) = struct.unpack(">I", await self._reader.readexactly(4))
                data = self._inflate.decompress(await self._reader.readexactly(length))
                if len(data) != w * h * BYTES_PER_PIXEL:
                    raise _ProtocolError(f"zlib rectangle {w}x{h} inflated to {len(data)} bytes")
                self._put(x, y, w, h, data)
            elif encoding == ENCODING_COPY_RECT:
                src_x, src_y = struct.unpack(">HH", await self._reader.readexactly(4))
                if src_x + w > self.width or src_y + h > self.height:
                    raise _ProtocolError(f"CopyRect source {w}x{h}+{src_x}+{src_y} outside the screen")
                self._put(x, y, w, h, self._get(src_x, src_y, w, h))
            else:
                raise _ProtocolError(f"rectangle in encoding {encoding}, which was not asked for")
            pixels = True
        if not pixels:
            return
        for waiter in self._waiters[:answered]:
            if not waiter.done():
                waiter.set_result(None)
        del self._waiters[:answered]

    def _resize(self, width: int, height: int) -> None:
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            raise _ProtocolError(f"desktop size {width}x{height}")
        self.width, self.height = width, height
        self.pixels = bytearray(width * height * BYTES_PER_PIXEL)

    def _put(self, x: int, y: int, w: int, h: int, data: bytes) -> None:
        row, stride = w * BYTES_PER_PIXEL, self.width * BYTES_PER_PIXEL
        view = memoryview(data)
        for line in range(h):
            start = (y + line) * stride + x * BYTES_PER_PIXEL
            self.pixels[start : start + row] = view[line * row : (line + 1) * row]

    def _get(self, x: int, y: int, w: int, h: int) -> bytes:
        row, stride = w * BYTES_PER_PIXEL, self.width * BYTES_PER_PIXEL
        starts = [(y + line) * stride + x * BYTES_PER_PIXEL for line in range(h)]
        return b"".join(self.pixels[start : start + row] for start in starts)


class _ProtocolError(Exception):
    """The server sent something RFB does not allow (or this client did not ask for)."""


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    endpoint: str,
    password: str | None,
    encodings: tuple[int, ...],
    newest: int,
) -> ServerInit:
    """ProtocolVersion, security, ClientInit, ServerInit; then SetPixelFormat and
    SetEncodings (RFC 6143 7.1-7.3, 7.5.1-7.5.2)."""

    def refused(reason: str) -> ChannelError:
        return ChannelError(CHANNEL, endpoint, reason)

    greeting = await reader.readexactly(12)
    match = _VERSION.fullmatch(greeting)
    if match is None or int(match.group(1)) != 3:
        raise refused(f"not an RFB 3.x server (it greeted with {greeting[:12]!r})")
    minor = int(match.group(2))
    minor = min(minor, newest)
    minor = 8 if minor >= 8 else 7 if minor == 7 else 3  # 3.4-3.6 are 3.3: RFC 6143 7.1.1
    writer.write(b"RFB 003.%03d\n" % minor)

    if minor == 3:
        (chosen,) = struct.unpack(">I", await reader.readexactly(4))
        if chosen == SECURITY_INVALID:
            raise refused(f"the server refused the connection: {await _read_reason(reader)}")
        offered = [chosen]
    else:
        (count,) = await reader.readexactly(1)
        if count == 0:
            raise refused(f"the server refused the connection: {await _read_reason(reader)}")
        offered = list(await reader.readexactly(count))
    chosen = _choose_security(offered, password, refused)
    if minor != 3:
        writer.write(bytes([chosen]))
    if chosen == SECURITY_VNC_AUTH:
        assert password is not None
        writer.write(vnc_auth_response(password, await reader.readexactly(16)))
    if chosen == SECURITY_VNC_AUTH or minor == 8:  # 3.3 and 3.7 send no result for None
        (result,) = struct.unpack(">I", await reader.readexactly(4))
        if result != 0:
            said = f" (the server said: {await _read_reason(reader)})" if minor == 8 else ""
            what = "VNC authentication failed: wrong password" if chosen == SECURITY_VNC_AUTH else "security failed"
            raise refused(what + said)

    writer.write(b"\x01")  # ClientInit: shared, other viewers stay connected
    width, height = struct.unpack(">HH", await reader.readexactly(4))
    await reader.readexactly(16)  # the server's own pixel format: ours replaces it
    (name_length,) = struct.unpack(">I", await reader.readexactly(4))
    name = (await _read_bounded(reader, name_length, MAX_REASON)).decode("utf-8", "replace")
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise refused(f"the server announced a {width}x{height} framebuffer")
    writer.write(struct.pack(">B3x", SET_PIXEL_FORMAT) + PIXEL_FORMAT)
    writer.write(struct.pack(f">BxH{len(encodings)}i", SET_ENCODINGS, len(encodings), *encodings))
    await writer.drain()
    return ServerInit((3, minor), name, width, height)


def _choose_security(offered: list[int], password: str | None, refused: Callable[[str], ChannelError]) -> int:
    """VNC Authentication when there is a password and the server offers it, else None."""
    if password is not None and SECURITY_VNC_AUTH in offered:
        return SECURITY_VNC_AUTH
    if SECURITY_NONE in offered:
        return SECURITY_NONE
    names = ", ".join(SECURITY_NAMES.get(kind, str(kind)) for kind in offered)
    if SECURITY_VNC_AUTH in offered:
        raise refused("the server wants a VNC password (give password_env=VAR)")
    raise refused(f"no security type this client speaks (the server offers: {names})")


async def _read_reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    text = (await _read_bounded(reader, length, MAX_REASON)).decode("utf-8", "replace")
    return text.strip() or "no reason given"


async def _read_bounded(reader: asyncio.StreamReader, length: int, limit: int) -> bytes:
    """``length`` bytes, of which the first ``limit`` are kept (the rest read past)."""
    kept = await reader.readexactly(min(length, limit))
    remaining = length - len(kept)
    while remaining:
        remaining -= len(await reader.readexactly(min(remaining, 1 << 16)))
    return kept


def _why(err: BaseException) -> str:
    if isinstance(err, asyncio.IncompleteReadError):
        return "the server closed the connection"
    return str(err) or type(err).__name__
