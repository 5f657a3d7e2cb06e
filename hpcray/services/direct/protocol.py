"""Wire protocol HPR1 (docs/direct-protocol.md): one ZeroMQ frame per request and per reply,
a fixed little-endian header then the bytes, so a C or Fortran program needs libzmq alone.

request (client -> replica), 10-byte header:
  "HPR1" | 'Q' | codec | flags | id_len:u8 | method_len:u16 | id | method | payload
reply (replica -> client), 10-byte header:
  "HPR1" | 'A' | codec | status | id_len:u8 | replica_len:u8 | timing_len:u8 |
  id | replica | timing | payload

codec: 'm' msgpack, 'j' JSON, 'r' raw bytes. flags bit 0: send timing back.
status: 'o' ok (payload = result), 'e' the handler raised, 'r' refused as malformed
(payload = UTF-8 message for both). timing: empty, or three uint64 nanosecond durations on the
replica's own clock: receive -> handler start (queue + decode), the handler, handler end ->
send (encode). A REQ client's empty delimiter frame is echoed back, so REQ and DEALER both work.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

MAGIC = b"HPR1"
REQUEST, REPLY = b"Q", b"A"
CODECS = {b"m": "msgpack", b"j": "json", b"r": "raw"}
CODEC_BYTE = {v: k for k, v in CODECS.items()}
TIMING_FLAG = 1
OK, FAILED, REFUSED = b"o", b"e", b"r"
PING = ".ping"  # built-in method: the replica's identity and start times (no user code runs)
REQUEST_HEADER = struct.Struct("<4sccBBH")   # magic kind codec flags id_len method_len
REPLY_HEADER = struct.Struct("<4scccBBB")    # magic kind codec status id_len replica_len timing_len
TIMING = struct.Struct("<QQQ")
MAX_ID = 255


class ProtocolError(ValueError):
    """Bytes that do not follow HPR1; the message says which field is wrong."""


@dataclass(frozen=True)
class Timing:
    """Where one request's time went. Each side measures its own spans with its own clock, so
    communication needs no clock synchronisation: round trip minus what the replica spent."""

    round_trip_s: float
    before_s: float     # replica: receive -> handler start (queue wait + decode)
    inference_s: float  # replica: the handler itself
    after_s: float      # replica: handler end -> send (encode)

    @property
    def service_s(self) -> float:
        return self.before_s + self.after_s

    @property
    def communication_s(self) -> float:
        return max(0.0, self.round_trip_s - self.before_s - self.inference_s - self.after_s)


@dataclass
class Reply:
    id: str
    replica: str
    status: bytes
    payload: Any
    timing: Timing


@dataclass
class Request:
    id: bytes
    method: str
    codec: bytes
    timed: bool
    payload: bytes


def encode(codec: str, value: Any) -> bytes:
    if codec == "msgpack":
        return msgpack.packb(value, use_bin_type=True)
    if codec == "json":
        return json.dumps(value, separators=(",", ":")).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"the raw codec carries bytes or str, not {type(value).__name__}")


def decode(codec: str, data: bytes) -> Any:
    if codec == "raw":
        return data
    if not data:
        return None
    if codec == "msgpack":
        return msgpack.unpackb(data, raw=False)
    return json.loads(data)


def pack_request(request_id: bytes, method: str, payload: Any, *, codec: str = "msgpack",
                 timing: bool = True) -> bytes:
    if not 0 < len(request_id) <= MAX_ID:
        raise ValueError(f"a request id is 1 to {MAX_ID} bytes, got {len(request_id)}")
    name = method.encode()
    head = REQUEST_HEADER.pack(MAGIC, REQUEST, CODEC_BYTE[codec], TIMING_FLAG if timing else 0,
                               len(request_id), len(name))
    return b"".join((head, request_id, name, encode(codec, payload)))


def unpack_request(frame: bytes) -> Request:
    if len(frame) < REQUEST_HEADER.size:
        raise ProtocolError(f"a request is at least {REQUEST_HEADER.size} bytes, got {len(frame)}")
    magic, kind, codec, flags, id_len, method_len = REQUEST_HEADER.unpack_from(frame)
    if magic != MAGIC or kind != REQUEST:
        raise ProtocolError(f"bytes 0-4 must be 'HPR1Q', got {frame[:5]!r}")
    if codec not in CODECS:
        raise ProtocolError(f"byte 5 (codec) must be one of m, j, r; got {codec!r}")
    start = REQUEST_HEADER.size
    if id_len == 0 or len(frame) < start + id_len + method_len:
        raise ProtocolError("id_len (byte 7) and method_len (bytes 8-9) exceed the frame "
                            "or the id is empty")
    rid = frame[start:start + id_len]
    method = frame[start + id_len:start + id_len + method_len].decode()
    return Request(rid, method, codec, bool(flags & TIMING_FLAG),
                   frame[start + id_len + method_len:])


def pack_reply(request_id: bytes, replica: bytes, codec: bytes, status: bytes, timing: bytes,
               body: bytes) -> bytes:
    head = REPLY_HEADER.pack(MAGIC, REPLY, codec, status, len(request_id), len(replica),
                             len(timing))
    return b"".join((head, request_id, replica, timing, body))


def unpack_reply(frame: bytes, round_trip_s: float) -> Reply:
    if len(frame) < REPLY_HEADER.size:
        raise ProtocolError(f"a reply is at least {REPLY_HEADER.size} bytes, got {len(frame)}")
    magic, kind, codec_b, status, id_len, rep_len, t_len = REPLY_HEADER.unpack_from(frame)
    if magic != MAGIC or kind != REPLY or codec_b not in CODECS:
        raise ProtocolError(f"not an HPR1 reply: {frame[:REPLY_HEADER.size]!r}")
    pos = REPLY_HEADER.size
    rid = frame[pos:pos + id_len].decode()
    pos += id_len
    replica = frame[pos:pos + rep_len].decode()
    pos += rep_len
    if t_len == TIMING.size:
        before, inference, after = (n * 1e-9 for n in TIMING.unpack_from(frame, pos))
    else:
        before = inference = after = 0.0
    body = frame[pos + t_len:]
    payload = decode(CODECS[codec_b], body) if status == OK else body.decode(errors="replace")
    return Reply(rid, replica, status, payload, Timing(round_trip_s, before, inference, after))


def reply_id(frame: bytes) -> bytes:
    """The request id of a reply, without decoding the rest."""
    return frame[REPLY_HEADER.size:REPLY_HEADER.size + frame[7]]
