"""HPR1 framing: what a C client must produce and parse, checked byte by byte."""

from __future__ import annotations

import struct

import pytest

from hpcray.services.direct.protocol import (
    OK,
    ProtocolError,
    encode,
    pack_reply,
    pack_request,
    reply_id,
    unpack_reply,
    unpack_request,
)


def test_request_layout_is_the_documented_one():
    frame = pack_request(b"r-1", "echo", {"x": 1}, codec="json", timing=True)
    assert frame[:10] == b"HPR1Qj\x01" + bytes([3]) + struct.pack("<H", 4)
    assert frame[10:] == b'r-1echo{"x":1}'
    req = unpack_request(frame)
    assert (req.id, req.method, req.codec, req.timed, req.payload) == \
        (b"r-1", "echo", b"j", True, b'{"x":1}')


def test_reply_layout_and_timing():
    timing = struct.pack("<QQQ", 1000, 2_000_000, 3000)
    frame = pack_reply(b"abc", b"rep1", b"m", OK, timing, encode("msgpack", [1, 2]))
    assert frame[:10] == b"HPR1Amo" + bytes([3, 4, 24])
    assert reply_id(frame) == b"abc"
    reply = unpack_reply(frame, round_trip_s=0.01)
    assert (reply.id, reply.replica, reply.payload) == ("abc", "rep1", [1, 2])
    assert [reply.timing.before_s, reply.timing.inference_s, reply.timing.after_s] == \
        pytest.approx([1e-6, 2e-3, 3e-6], rel=1e-9)
    assert reply.timing.round_trip_s == 0.01
    assert reply.timing.service_s == pytest.approx(4e-6)
    assert reply.timing.communication_s == pytest.approx(0.01 - 2.004e-3)


def test_raw_codec_carries_bytes_and_refuses_objects():
    assert unpack_request(pack_request(b"i", "m", b"\x00\x01", codec="raw")).payload == b"\x00\x01"
    with pytest.raises(TypeError, match="raw codec carries bytes or str, not dict"):
        pack_request(b"i", "m", {"a": 1}, codec="raw")


@pytest.mark.parametrize(("frame", "message"), [
    (b"HPR1", "at least 10 bytes"),
    (b"HPX1Qm\x01\x01\x00\x00i", "bytes 0-4 must be 'HPR1Q'"),
    (b"HPR1Qx\x01\x01\x00\x00i", r"byte 5 \(codec\)"),
    (b"HPR1Qm\x01\x05\x09\x00ab", "exceed the frame"),
    (b"HPR1Qm\x01\x00\x00\x00", "the id is empty"),
])
def test_malformed_requests_name_the_field(frame, message):
    with pytest.raises(ProtocolError, match=message):
        unpack_request(frame)


def test_request_ids_are_bounded():
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        pack_request(b"x" * 256, "m", None)
