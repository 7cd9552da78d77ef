"""One test per correction in plugins/rdp_compat.py, against the specification's bytes
(MS-RDPBCGR, T.125 / X.691) or aardwolf 0.2.16's own output; the end-to-end sessions that
need them all are in test_rdp_console.py."""

from __future__ import annotations

import io

import asn1tools
import pytest
from aardwolf.protocol.fastpath.bitmap import TS_BITMAP_DATA, TS_BITMAP_FLAG
from aardwolf.protocol.T125.MCSPDU_ver_2 import MCSPDU_ver_2
from aardwolf.protocol.T128.share import PDUTYPE, PDUTYPE2, STREAM_TYPE, TS_SHARECONTROLHEADER, TS_SHAREDATAHEADER

from beachhead.plugins import rdp_compat
from beachhead.plugins.rdp_console import bitmap_update_payload


def test_other_aardwolf_versions_are_refused() -> None:
    rdp_compat.check_version()  # the installed one is the pinned one
    with pytest.raises(
        rdp_compat.AardwolfVersionError, match=r"aardwolf 0\.2\.16 only; aardwolf 0\.2\.17 is installed"
    ):
        rdp_compat.check_version("0.2.17")


def test_1_user_channel_is_initiator_plus_1001() -> None:
    # T.125 Attach User Confirm {result rt-successful, initiator 1007}: UserId is a
    # DynamicChannelId (1001..65535), PER-encoded as its offset (6).
    confirm = bytes.fromhex("2e000006")
    codec = asn1tools.compile_string(MCSPDU_ver_2, "per")
    kind, fields = codec.decode("DomainMCSPDU", confirm)
    assert kind == "attachUserConfirm"
    assert fields["initiator"] == 6  # aardwolf keeps the offset
    assert rdp_compat.user_channel_id(fields["initiator"]) == 1007


def test_2_unknown_capability_set_is_kept_raw() -> None:
    rdp_compat.install_parser_correction()
    from aardwolf.protocol.pdu.capabilities import CAPSTYPE, TS_CAPS_SET

    assert 6 not in CAPSTYPE._value2member_map_  # why xrdp's set 6 made aardwolf raise
    general = bytes.fromhex("0100 1800") + bytes(20)
    unknown = bytes.fromhex("0600 0800") + b"\x01\x02\x03\x04"
    buffer = io.BytesIO(unknown + general)
    kept = TS_CAPS_SET.from_buffer(buffer)
    assert (kept.capabilitySetType, kept.capabilityData, kept.capability) == (6, b"\x01\x02\x03\x04", None)
    after = TS_CAPS_SET.from_buffer(buffer)  # the next set is read from the right offset
    assert after.capabilitySetType == CAPSTYPE.GENERAL


def test_3_finalization_is_sent_without_waiting() -> None:
    connection_class = rdp_compat.connection_class()
    # The corrected class sends the client finalization PDUs after Confirm Active itself.
    assert hasattr(connection_class, "_compat_send_finalization")
    assert connection_class.handle_out_data is not connection_class.__mro__[1].handle_out_data


def test_4_share_data_header_total_length() -> None:
    # A Synchronize PDU: 4 bytes of payload, 18 of Share Data Header: totalLength 22.
    assert rdp_compat.share_data_total_length(4) == 22
    header = TS_SHAREDATAHEADER()
    header.shareControlHeader = TS_SHARECONTROLHEADER()
    header.shareControlHeader.pduType = PDUTYPE.DATAPDU
    header.shareControlHeader.pduSource = 1007
    header.shareControlHeader.totalLength = 4 + rdp_compat.AARDWOLF_SHARE_DATA_HEADER_LENGTH  # as aardwolf sets it
    header.shareID, header.streamID, header.pduType2 = 0x103EA, STREAM_TYPE.MED, PDUTYPE2.SYNCHRONIZE
    header.uncompressedLength, header.compressedType, header.compressedLength = 28, 0, 0
    assert len(header.to_bytes()) == rdp_compat.SHARE_DATA_HEADER_LENGTH
    assert int.from_bytes(header.to_bytes()[:2], "little") == 28  # 6 too long


def test_5_erect_domain_request_per_bytes() -> None:
    codec = asn1tools.compile_string(MCSPDU_ver_2, "per")
    assert bytes.fromhex("0401000100") == rdp_compat.ERECT_DOMAIN_REQUEST
    assert codec.encode("DomainMCSPDU", ("erectDomainRequest", {"subHeight": 0, "subInterval": 0})) == (
        rdp_compat.ERECT_DOMAIN_REQUEST
    )
    assert codec.decode("DomainMCSPDU", rdp_compat.ERECT_DOMAIN_REQUEST) == (
        "erectDomainRequest",
        {"subHeight": 0, "subInterval": 0},
    )
    assert rdp_compat.AARDWOLF_ERECT_DOMAIN_REQUEST != rdp_compat.ERECT_DOMAIN_REQUEST


def test_6_bulk_compression_is_not_offered() -> None:
    from aardwolf.protocol.x224.constants import SUPP_PROTOCOLS

    assert rdp_compat.io_settings(protocols=SUPP_PROTOCOLS.SSL).bulk_compression_max_type is None


def test_7_bitmap_decoded_at_its_own_size() -> None:
    # An uncompressed 16-bpp bitmap 4 pixels wide (rows padded as servers pad them)
    # drawn into a destination 3 pixels wide, 2 high.
    bitmap = TS_BITMAP_DATA()
    bitmap.destLeft, bitmap.destTop, bitmap.destRight, bitmap.destBottom = 10, 20, 12, 21
    bitmap.width, bitmap.height, bitmap.bitsPerPixel = 4, 2, 16
    bitmap.flags = TS_BITMAP_FLAG(0)
    bitmap.bitmapDataStream = bytes.fromhex("ffff") * 8
    video, image = rdp_compat.decode_bitmap(bitmap)
    assert (video.x, video.y, video.width, video.height) == (10, 20, 3, 2)
    assert image.size == (3, 2)


def test_slow_path_bitmap_update_is_found() -> None:
    payload = bytes.fromhex("0100 0000")  # updateType bitmap, no rectangles
    pdu = (
        (18 + len(payload)).to_bytes(2, "little") + bytes.fromhex("1700 ef03 ea030100 00 02 0000 02 00 0000") + payload
    )
    assert bitmap_update_payload(pdu) == payload
    assert bitmap_update_payload(bytes(4) + pdu) == payload
