"""Wire protocol HPR1 (docs/direct-protocol.md): one ZeroMQ frame per request and per reply,
a fixed little-endian header then the bytes, so a C or Fortran program needs libzmq alone.

request (client -> replica), 10-byte header:
  "HPR1" | 'Q' | codec | flags | id_len:u8 | method_len:u16 | id | method | payload
reply (replica -> client), 10-byte header:
  "HPR1" | 'A' | codec | status | id_len:u8 | replica_len:u8 | timing_len:u8 |
  id | replica | timing | payload

codec: 'm' msgpack, 'j' JSON, 'r' raw bytes. flags bit 0: send timing back; bit 1: stream.
status: 'o' ok (payload = result), 'e' the handler raised, 'r' refused as malformed
(payload = UTF-8 message for both), 'p' one piece of a streamed result. timing: empty, or three
uint64 nanosecond durations on the replica's own clock: receive -> handler start (queue +
decode), the handler, handler end -> send (encode). A REQ client's empty delimiter frame is
echoed back, so REQ and DEALER both work.

A streamed request (flag bit 1) runs the service's `<method>_stream` generator: one 'p' reply
per piece, then one 'o' reply (payload null, with the timing) or an 'e' reply. The built-in
method `.cancel`, sent with the id of a stream in flight from the same connection, stops that
stream; nothing more is sent for it and `.cancel` itself gets no reply.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

import msgpack

from hpcray.errors import ProtocolError

MAGIC = b"HPR1"
REQUEST, REPLY = b"Q", b"A"
CODECS = {b"m": "msgpack", b"j": "json", b"r": "raw"}
CODEC_BYTE = {v: k for k, v in CODECS.items()}
TIMING_FLAG = 1
STREAM_FLAG = 2
OK, FAILED, REFUSED, PIECE = b"o", b"e", b"r", b"p"
PING = ".ping"  # built-in method: the replica's identity and start times (no user code runs)
CANCEL = ".cancel"  # built-in method: stop the stream in flight with this request's id
REQUEST_HEADER = struct.Struct("<4sccBBH")   # magic kind codec flags id_len method_len
REPLY_HEADER = struct.Struct("<4scccBBB")    # magic kind codec status id_len replica_len timing_len
TIMING = struct.Struct("<QQQ")
MAX_ID = 255


class Timing:
    """Where one request's time went. Each side measures its own spans with its own clock, so
    communication needs no clock synchronisation: round trip minus what the replica spent.
    (A plain slotted class: one is built per request, on the hot path.)"""

    __slots__ = ("after_s", "before_s", "inference_s", "round_trip_s")

    def __init__(self, round_trip_s: float, before_s: float, inference_s: float,
                 after_s: float) -> None:
        self.round_trip_s = round_trip_s
        self.before_s = before_s        # replica: receive -> handler start (queue + decode)
        self.inference_s = inference_s  # replica: the handler itself
        self.after_s = after_s          # replica: handler end -> send (encode)

    @property
    def service_s(self) -> float:
        return self.before_s + self.after_s

    @property
    def communication_s(self) -> float:
        return max(0.0, self.round_trip_s - self.before_s - self.inference_s - self.after_s)

    def __repr__(self) -> str:
        return (f"Timing(round_trip_s={self.round_trip_s!r}, before_s={self.before_s!r}, "
                f"inference_s={self.inference_s!r}, after_s={self.after_s!r})")


class Reply:
    """One reply. Built on the caller's critical path, so the id, the replica name and the
    timing are decoded from the frame only when first read."""

    __slots__ = ("_frame", "_ns", "_timing", "payload", "round_trip_s", "status")

    def __init__(self, frame: bytes, status: bytes, payload: Any, round_trip_s: float,
                 ns: tuple[int, int, int] | None) -> None:
        self._frame = frame
        self.status = status
        self.payload = payload
        self.round_trip_s = round_trip_s
        self._ns = ns
        self._timing: Timing | None = None

    @property
    def id(self) -> str:
        return reply_id(self._frame).decode()

    @property
    def replica(self) -> str:
        start = REPLY_HEADER.size + self._frame[7]
        return self._frame[start:start + self._frame[8]].decode()

    @property
    def timing(self) -> Timing:
        if self._timing is None:
            before, inference, after = self._ns or (0, 0, 0)
            self._timing = Timing(self.round_trip_s, before * 1e-9, inference * 1e-9,
                                  after * 1e-9)
        return self._timing

    def __repr__(self) -> str:
        return (f"Reply(id={self.id!r}, replica={self.replica!r}, status={self.status!r}, "
                f"payload={self.payload!r}, timing={self.timing!r})")


class Request(NamedTuple):
    id: bytes
    method: str
    codec: bytes
    timed: bool
    payload: bytes
    streamed: bool = False


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


_request_head = REQUEST_HEADER.pack


def pack_request(request_id: bytes, method: str, payload: Any, *, codec: str = "msgpack",
                 timing: bool = True, stream: bool = False) -> bytes:
    if not 0 < len(request_id) <= MAX_ID:
        raise ValueError(f"a request id is 1 to {MAX_ID} bytes, got {len(request_id)}")
    name = method.encode()
    body = msgpack.packb(payload, use_bin_type=True) if codec == "msgpack" else \
        encode(codec, payload)
    flags = (TIMING_FLAG if timing else 0) | (STREAM_FLAG if stream else 0)
    return b"".join((_request_head(MAGIC, REQUEST, CODEC_BYTE[codec], flags, len(request_id),
                                   len(name)),
                     request_id, name, body))


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
                   frame[start + id_len + method_len:], bool(flags & STREAM_FLAG))


def pack_reply(request_id: bytes, replica: bytes, codec: bytes, status: bytes, timing: bytes,
               body: bytes) -> bytes:
    head = REPLY_HEADER.pack(MAGIC, REPLY, codec, status, len(request_id), len(replica),
                             len(timing))
    return b"".join((head, request_id, replica, timing, body))


_timing = TIMING.unpack_from
_unpackb = msgpack.unpackb


def unpack_reply(frame: bytes, round_trip_s: float) -> Reply:
    if len(frame) < 10 or frame[:5] != b"HPR1A" or frame[5:6] not in CODECS:
        raise ProtocolError(f"not an HPR1 reply: {frame[:REPLY_HEADER.size]!r}")
    t_len = frame[9]
    pos = 10 + frame[7] + frame[8]
    ns = _timing(frame, pos) if t_len == 24 else None
    status, codec_b = frame[6:7], frame[5:6]
    pos += t_len
    if status != OK and status != PIECE:
        payload: Any = frame[pos:].decode(errors="replace")
    elif codec_b == b"m":
        payload = _unpackb(frame[pos:], raw=False) if len(frame) > pos else None
    else:
        payload = decode(CODECS[codec_b], frame[pos:])
    return Reply(frame, status, payload, round_trip_s, ns)


def reply_id(frame: bytes) -> bytes:
    """The request id of a reply, without decoding the rest."""
    return frame[REPLY_HEADER.size:REPLY_HEADER.size + frame[7]]
