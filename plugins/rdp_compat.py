"""Corrections aardwolf 0.2.16 needs to complete an RDP session with Debian's xrdp 0.9.21
and FreeRDP 2.11's shadow server, in one place and for that version only.

The six measured in the console work (see the issue), and a seventh found here (7).

:func:`connection_class` checks the installed aardwolf (any other version raises
:class:`AardwolfVersionError` naming both versions: the corrections reach into that
version's private methods and must be re-measured for another), installs the parser
correction, and returns :class:`CompatRDPConnection`, aardwolf's ``RDPConnection`` with
the protocol corrections. :func:`io_settings` gives the settings the corrections assume
(bulk compression off, no virtual channels). Each correction was measured by leaving
it out; ``tests/console/test_rdp_compat.py`` has a test for each.

1. **MCS user channel** (both servers). aardwolf joins the I/O channel and the virtual
   channels but never the user channel. T.125 (and MS-RDPBCGR 1.3.1.1, "Channel
   Connection") has the client join the user channel its Attach User Confirm gave it,
   then the I/O channel and each virtual channel; the servers wait for that join. The
   confirm's ``initiator`` is a UserId, a DynamicChannelId (1001..65535) that PER
   encodes as its offset from 1001; aardwolf's ASN.1 declares it as a plain ChannelId
   and so keeps the offset: the user channel id is ``initiator + 1001``
   (:func:`user_channel_id`). Correction: join it first.
2. **Unknown capability sets** (xrdp). xrdp's Demand Active PDU carries capability set
   type 6, which MS-RDPBCGR 2.2.1.13.1.1.1 does not define (T.128 numbers it; MS-RDPBCGR
   says a receiver ignores what it does not know). aardwolf's ``CAPSTYPE`` enum raises
   ``ValueError`` on it and the connection fails. Correction: keep an unknown set as
   ``capabilitySetType`` (the int) and raw ``capabilityData``.
3. **Connection finalization** (xrdp). aardwolf sends its Confirm Active, then waits for
   the server's Synchronize PDU before sending its own Synchronize, Control (Cooperate,
   Request Control) and Font List. MS-RDPBCGR 1.3.1.1 ("Connection Finalization"): the
   client-to-server PDUs "have no dependencies on any of the server-to-client PDUs" and
   may be sent as a batch. xrdp sends its Synchronize only after the client's Request
   Control: both wait, the session never starts. Correction: send the four client PDUs
   right after the Confirm Active (aardwolf's own later copies are then not sent).
4. **Share Data Header length** (both). For slow-path data PDUs aardwolf writes
   ``shareControlHeader.totalLength`` = payload + 24; the header is 18 bytes (Share
   Control Header 6, then shareId 4, pad1 1, streamId 1, uncompressedLength 2, pduType2
   1, compressedType 1, compressedLength 2: MS-RDPBCGR 2.2.8.1.1.1.1 and 2.2.8.1.1.1.2),
   and totalLength is the length of the whole PDU. xrdp logs "bad
   TS_SHARECONTROLHEADER length" and drops the input. Correction: payload + 18
   (:func:`share_data_total_length`).
5. **Erect Domain Request** (FreeRDP). aardwolf sends the bytes ``04 00 01 00 01``.
   T.125's ErectDomainRequest is ``[APPLICATION 1] IMPLICIT SEQUENCE { subHeight
   INTEGER (0..MAX), subInterval INTEGER (0..MAX) }``; in aligned PER (X.691): the
   DomainMCSPDU choice index 1 in the top 6 bits (``04``), then each semi-constrained
   integer as a length octet and its value: ``01 00``, ``01 00``. FreeRDP parses it
   and drops the connection; xrdp does not look. Correction: ``04 01 00 01 00``
   (:data:`ERECT_DOMAIN_REQUEST`).
6. **Bulk compression** (xrdp). aardwolf's RDP 6.1 bulk decompressor fails on xrdp's
   compressed updates. Correction: do not advertise compression
   (``bulk_compression_max_type = None`` in :func:`io_settings`; the Info Packet then has
   no ``INFO_COMPRESSION``, MS-RDPBCGR 2.2.1.11.1.1, and servers send plain updates).

7. **Bitmap rectangle size** (both). aardwolf decodes a TS_BITMAP_DATA with the
   destination rectangle's size (``destRight - destLeft + 1``). MS-RDPBCGR 2.2.9.1.1.3.1.2.2:
   ``width`` and ``height`` are the bitmap's own, which servers round up (xrdp: to a
   multiple of 4), and the destination may be smaller; decoding an RLE bitmap of 342
   pixels' width as 342 fails ("decoded more pixels than width*height") and that part
   of the screen is never drawn. Correction: decode with ``width`` x ``height``, then
   crop to the destination (:func:`decode_bitmap`).

Not a correction but needed for a console: ``INFO_AUTOLOGON`` (MS-RDPBCGR 2.2.1.11.1.1)
in the Info Packet, which aardwolf never sets; without it xrdp shows its login dialog
instead of starting the session with the credentials given
(:attr:`CompatRDPConnection.autologon`).

Upstream (skelsec/aardwolf), in short, against 0.2.16's ``aardwolf/connection.py`` and
``aardwolf/protocol/pdu/capabilities/__init__.py``:

- ``__join_channels``: join ``self._initiator + 1001`` (the user channel) before the
  I/O and virtual channels (or declare UserId as ``DynamicChannelId`` in the ASN.1 and
  keep the decoded value).
- ``TS_CAPS_SET.from_buffer``: keep unknown capability set types as raw data instead
  of ``CAPSTYPE(value)`` raising.
- ``__handle_mandatory_capability_exchange``: send Synchronize, Control Cooperate,
  Control Request Control and Font List right after Confirm Active; read the server's
  finalization PDUs afterwards (any order).
- ``handle_out_data``: ``totalLength = len(data) + 18`` for data PDUs.
- ``__erect_domain``: ``bytes.fromhex('0401000100')``.
- ``RDP_VIDEO.from_bitmapdata``: decode with ``bitmapdata.width``/``height`` and crop
  to the destination rectangle.
- the RDP 6.1 bulk decompressor against xrdp 0.9.21's output (reproduce with
  compression on); and an ``INFO_AUTOLOGON`` option.
"""

from __future__ import annotations

import io
from importlib import metadata
from typing import Any

from beachhead.agent.errors import BeachheadError

#: The only aardwolf these corrections are for.
AARDWOLF_VERSION = "0.2.16"
#: T.125: a UserId is a DynamicChannelId, 1001..65535, PER-encoded as the offset from 1001.
USER_ID_BASE = 1001
#: T.125 ErectDomainRequest {subHeight 0, subInterval 0} in aligned PER.
ERECT_DOMAIN_REQUEST = bytes.fromhex("0401000100")
#: What aardwolf 0.2.16 sends instead.
AARDWOLF_ERECT_DOMAIN_REQUEST = bytes.fromhex("0400010001")
#: MS-RDPBCGR 2.2.8.1.1.1.2: the Share Data Header, Share Control Header included.
SHARE_DATA_HEADER_LENGTH = 18
#: aardwolf 0.2.16 writes totalLength = payload + this.
AARDWOLF_SHARE_DATA_HEADER_LENGTH = 24


class AardwolfVersionError(BeachheadError):
    """The installed aardwolf is not the version the compatibility corrections are for."""


def installed_version() -> str:
    """The installed aardwolf's version ("" when it is not installed)."""
    try:
        return metadata.version("aardwolf")
    except metadata.PackageNotFoundError:
        return ""


def check_version(version: str | None = None) -> None:
    """Raise :class:`AardwolfVersionError` unless ``version`` (default: the installed
    one) is :data:`AARDWOLF_VERSION`."""
    found = installed_version() if version is None else version
    if found != AARDWOLF_VERSION:
        raise AardwolfVersionError(
            f"beachhead.plugins.rdp_compat corrects aardwolf {AARDWOLF_VERSION} only; "
            f"aardwolf {found or '(not installed)'} is installed: install aardwolf=={AARDWOLF_VERSION} "
            "(bootstrap/install.sh) or re-measure the corrections for it"
        )


def user_channel_id(initiator: int) -> int:
    """The MCS user channel id for aardwolf's ``_initiator`` (the PER offset)."""
    return initiator + USER_ID_BASE


def share_data_total_length(payload_length: int) -> int:
    """``totalLength`` of a slow-path data PDU whose payload (after the Share Data
    Header) is ``payload_length`` bytes."""
    return payload_length + SHARE_DATA_HEADER_LENGTH


def io_settings(*, width: int = 1024, height: int = 768, layout_id: int = 0x409, protocols: int) -> Any:
    """aardwolf ``RDPIOSettings`` for a console: no virtual channels (no clipboard, no
    drives), bulk compression off (correction 6), 16 bits per pixel, PIL bitmaps,
    keyboard layout ``layout_id``, X.224 ``protocols`` (``SUPP_PROTOCOLS`` flags)."""
    from aardwolf.commons.iosettings import RDPIOSettings
    from aardwolf.commons.queuedata.constants import VIDEO_FORMAT

    settings = RDPIOSettings()
    settings.channels = []
    settings.vchannels = {}
    settings.clipboard_use_pyperclip = False
    settings.supported_protocols = protocols
    settings.bulk_compression_max_type = None
    settings.video_width, settings.video_height = width, height
    # aardwolf's RLE decoder has no 24-bit planar/interleaved path ("Unsupported bpp").
    settings.video_bpp_min, settings.video_bpp_max = 16, 16
    settings.video_out_format = VIDEO_FORMAT.PIL
    settings.keyboard_layout = layout_id
    return settings


_original_caps_from_buffer: Any = None


def parse_capability_set(buff: io.BytesIO) -> Any:
    """Correction 2: aardwolf's ``TS_CAPS_SET.from_buffer``, keeping a set of a type its
    ``CAPSTYPE`` lacks as raw bytes (``capabilitySetType`` an int, ``capability`` None)."""
    from aardwolf.protocol.pdu.capabilities import CAPSTYPE, TS_CAPS_SET

    start = buff.tell()
    kind = int.from_bytes(buff.read(2), "little")
    if kind in CAPSTYPE._value2member_map_:
        buff.seek(start)
        return _original_caps_from_buffer(buff)
    caps = TS_CAPS_SET()
    caps.capabilitySetType = kind
    caps.lengthCapability = int.from_bytes(buff.read(2), "little")
    caps.capabilityData = buff.read(max(caps.lengthCapability - 4, 0))
    return caps


def decode_bitmap(bitmapdata: Any, output_format: Any = None) -> tuple[Any, Any]:
    """Correction 7: aardwolf's ``RDP_VIDEO.from_bitmapdata`` decoding the bitmap at its
    own size (``width`` x ``height``) and cropping it to the destination rectangle.
    Returns ``(RDP_VIDEO, PIL image)`` as the original does (``data`` the PIL image)."""
    from aardwolf.commons.queuedata import RDPDATATYPE
    from aardwolf.commons.queuedata.video import RDP_VIDEO
    from aardwolf.protocol.fastpath.bitmap import TS_BITMAP_FLAG
    from aardwolf.utils.rectconvert import rectconvert

    video = RDP_VIDEO()
    video.type = RDPDATATYPE.VIDEO
    video.x, video.y = bitmapdata.destLeft, bitmapdata.destTop
    video.width = bitmapdata.destRight - bitmapdata.destLeft + 1
    video.height = bitmapdata.destBottom - bitmapdata.destTop + 1
    video.bitsPerPixel = bitmapdata.bitsPerPixel
    video.is_compressed = TS_BITMAP_FLAG.BITMAP_COMPRESSION in bitmapdata.flags
    image = rectconvert(
        bitmapdata.width, bitmapdata.height, video.bitsPerPixel, video.is_compressed, bitmapdata.bitmapDataStream
    )
    if (video.width, video.height) != image.size:
        image = image.crop((0, 0, min(video.width, image.width), min(video.height, image.height)))
    video.data = image
    return video, image


def install_parser_correction() -> None:
    """Replace ``TS_CAPS_SET.from_buffer`` by :func:`parse_capability_set` and
    ``RDP_VIDEO.from_bitmapdata`` by :func:`decode_bitmap` (idempotent; checks the
    version first)."""
    global _original_caps_from_buffer
    check_version()
    from aardwolf.commons.queuedata.video import RDP_VIDEO
    from aardwolf.protocol.pdu.capabilities import TS_CAPS_SET

    if _original_caps_from_buffer is None:
        _original_caps_from_buffer = TS_CAPS_SET.from_buffer
        TS_CAPS_SET.from_buffer = staticmethod(parse_capability_set)
        RDP_VIDEO.from_bitmapdata = staticmethod(decode_bitmap)


def connection_class() -> type[Any]:
    """aardwolf's ``RDPConnection`` with the corrections, after checking the version and
    installing the parser correction."""
    install_parser_correction()
    return _corrected_connection_class()


_class_cache: list[type[Any]] = []


def _corrected_connection_class() -> type[Any]:
    if _class_cache:
        return _class_cache[0]
    from aardwolf.connection import RDPConnection
    from aardwolf.protocol.T125.infopacket import INFO_FLAG, TS_INFO_PACKET
    from aardwolf.protocol.T128.clientconfirmactivepdu import TS_CONFIRM_ACTIVE_PDU
    from aardwolf.protocol.T128.controlpdu import CTRLACTION, TS_CONTROL_PDU
    from aardwolf.protocol.T128.fontlistpdu import TS_FONT_LIST_PDU
    from aardwolf.protocol.T128.security import SEC_HDR_FLAG, TS_SECURITY_HEADER
    from aardwolf.protocol.T128.share import PDUTYPE2, STREAM_TYPE, TS_SHAREDATAHEADER
    from aardwolf.protocol.T128.synchronizepdu import TS_SYNCHRONIZE_PDU

    finalization_types = (TS_SYNCHRONIZE_PDU, TS_CONTROL_PDU, TS_FONT_LIST_PDU)

    class CorrectedShareDataHeader(TS_SHAREDATAHEADER):  # type: ignore[misc]
        """Correction 4: aardwolf's header with totalLength = payload + 18."""

        def to_bytes(self) -> bytes:
            data: bytes = super().to_bytes()
            excess = AARDWOLF_SHARE_DATA_HEADER_LENGTH - SHARE_DATA_HEADER_LENGTH
            total = int.from_bytes(data[:2], "little") - excess
            return total.to_bytes(2, "little") + data[2:]

    class CompatRDPConnection(RDPConnection):  # type: ignore[misc]
        """aardwolf 0.2.16's ``RDPConnection`` with corrections 1, 3, 4 and 5 (see the
        module docstring) and ``INFO_AUTOLOGON`` when :attr:`autologon` is set."""

        #: Set INFO_AUTOLOGON in the Info Packet (log on with the credentials given).
        autologon = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._compat_finalization_sent = 0

        # -- correction 5 ----------------------------------------------------------
        async def _RDPConnection__erect_domain(self) -> tuple[bool | None, Exception | None]:
            try:
                await self._x224net.write(ERECT_DOMAIN_REQUEST)
                return True, None
            except Exception as error:
                return None, error

        # -- correction 1 ----------------------------------------------------------
        async def _RDPConnection__join_channels(self) -> tuple[bool | None, Exception | None]:
            try:
                channel = user_channel_id(self._initiator)
                request = self._t125_per_codec.encode(
                    "DomainMCSPDU", ("channelJoinRequest", {"initiator": self._initiator, "channelId": channel})
                )
                await self._x224net.write(bytes(request))
                response = await self._x224net.read()
                if response is None:
                    raise ConnectionError("connection closed while joining the MCS user channel")
                kind, fields = self._t125_per_codec.decode("DomainMCSPDU", response.data)
                if kind != "channelJoinConfirm" or fields.get("result") != "rt-successful":
                    raise ConnectionError(f"the server refused the MCS user channel {channel}: {kind} {fields}")
            except Exception as error:
                return None, error
            result: tuple[bool | None, Exception | None] = await super()._RDPConnection__join_channels()
            return result

        # -- corrections 3, 4 and INFO_AUTOLOGON -----------------------------------
        async def handle_out_data(
            self,
            dataobj: Any,
            sec_hdr: Any,
            datacontrol_hdr: Any,
            sharecontrol_hdr: Any,
            channel_id: int,
            is_fastpath: bool,
        ) -> tuple[bool | None, Exception | None]:
            if isinstance(dataobj, TS_INFO_PACKET) and self.autologon:
                dataobj.flags |= INFO_FLAG.AUTOLOGON
            if isinstance(dataobj, finalization_types) and self._compat_finalization_sent:
                # aardwolf's own finalization PDU, already sent after Confirm Active.
                self._compat_finalization_sent -= 1
                return True, None
            if datacontrol_hdr is not None and not isinstance(datacontrol_hdr, CorrectedShareDataHeader):
                corrected = CorrectedShareDataHeader()
                corrected.__dict__.update(datacontrol_hdr.__dict__)
                datacontrol_hdr = corrected
            result: tuple[bool | None, Exception | None] = await super().handle_out_data(
                dataobj, sec_hdr, datacontrol_hdr, sharecontrol_hdr, channel_id, is_fastpath
            )
            if isinstance(dataobj, TS_CONFIRM_ACTIVE_PDU) and result[1] is None:
                result = await self._compat_send_finalization(channel_id)
            return result

        async def _compat_send_finalization(self, channel_id: int) -> tuple[bool | None, Exception | None]:
            """Synchronize, Control Cooperate, Control Request Control, Font List
            (MS-RDPBCGR 2.2.1.14 to 2.2.1.18), without waiting for the server."""
            pdus: list[tuple[Any, Any]] = []
            sync = TS_SYNCHRONIZE_PDU()
            sync.targetUser = channel_id
            pdus.append((PDUTYPE2.SYNCHRONIZE, sync))
            for action in (CTRLACTION.COOPERATE, CTRLACTION.REQUEST_CONTROL):
                control = TS_CONTROL_PDU()
                control.action, control.grantId, control.controlId = action, 0, 0
                pdus.append((PDUTYPE2.CONTROL, control))
            pdus.append((PDUTYPE2.FONTLIST, TS_FONT_LIST_PDU()))
            for kind, pdu in pdus:
                header = CorrectedShareDataHeader()
                header.shareID = 0x103EA  # aardwolf's; servers echo what they sent in Demand Active
                header.streamID = STREAM_TYPE.MED
                header.pduType2 = kind
                security = None
                if self.cryptolayer is not None:
                    security = TS_SECURITY_HEADER()
                    security.flags = SEC_HDR_FLAG.ENCRYPT
                    security.flagsHi = 0
                _, error = await super().handle_out_data(pdu, security, header, None, channel_id, False)
                if error is not None:
                    return None, error
            self._compat_finalization_sent = len(pdus)
            return True, None

    _class_cache.append(CompatRDPConnection)
    return CompatRDPConnection
