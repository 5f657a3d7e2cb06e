"""The replica side of the direct path: a ROUTER socket served by one thread of the replica.

Every request is stamped when it is taken off the socket, so time queued behind other requests
counts as service time, not communication. Synchronous handlers run one at a time per replica
(a replica is one model instance). A handler that takes less than INLINE_LIMIT_NS runs on the
socket thread itself: the lowest latency, and a request that arrives meanwhile is stamped at
most that long after its arrival. Slower handlers run on a worker thread while the socket
thread keeps receiving and stamping, so their queue time is exact. Coroutine handlers run
concurrently on an event loop: the service's own (`loop`, where its engine lives) or one of the
server's. That is how engines that batch (vLLM) see every request in flight at once.

Streams (request flag bit 1) run the service's `<method>_stream` generator: an async one on
that event loop, a plain one on a thread of its own; each piece is sent as it comes. A stream
stops when its client sends `.cancel` or has gone away (the socket refuses to route a piece to
it), so an engine aborts work nobody will read.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

from hpcray import env
from hpcray.errors import ServiceRequestError
from hpcray.metrics.recorder import Count, PerThread, ReplicaStats, ServiceStats
from hpcray.runtime.network import NODE_IP_ENV
from hpcray.services.direct.protocol import (
    CANCEL,
    CODECS,
    FAILED,
    OK,
    PIECE,
    PING,
    REFUSED,
    STREAM_FLAG,
    TIMING,
    TIMING_FLAG,
    ProtocolError,
    encode,
    pack_reply,
    reply_id,
    unpack_request,
)
from hpcray.services.direct.protocol import decode as decode_payload
from hpcray.services.ledger import ExecutedLog
from hpcray.services.reported import ServerTimed

log = logging.getLogger("hpcray.services.direct")

_packb, _unpackb = msgpack.packb, msgpack.unpackb
_timing_pack = TIMING.pack
_SNDMORE = zmq.SNDMORE
_NOBLOCK = zmq.NOBLOCK
_GONE = (errno.EHOSTUNREACH, errno.EAGAIN)  # the client left; or stopped reading (queue full)
STALL_LIMIT_S = 300.0  # a stream whose client reads nothing this long is stopped
HELD_POLL_MS = 5  # how often replies held for a slow reader are offered again
DRAIN_QUIET_S = 0.2  # a draining replica stops only after this long without an answer sent
DRAIN_POLL_S = 0.02
INLINE_LIMIT_NS = 100_000  # handlers faster than this (moving average) run on the socket thread
WORKER, LOOP = b"w", b"a"  # which side a completion comes from

PLAIN_USER = b"hpcray"


def run_token() -> bytes | None:
    """The run's secret (the Ray token file the node agent points every process at)."""
    path = os.environ.get(env.RAY_AUTH_TOKEN_PATH)
    if not path or not Path(path).is_file():
        return None
    return Path(path).read_text().strip().encode()


def bind_host() -> str:
    """The node's allocation-network address; never all interfaces."""
    host = os.environ.get(NODE_IP_ENV)
    if host:
        return host
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray: loopback
        return "127.0.0.1"


class DirectServer:
    def __init__(self, methods: Callable[[str], Callable[[Any], Any]], replica: str,
                 info: dict[str, Any], *, host: str | None = None,
                 token: bytes | None = None,
                 streams: Callable[[str], Callable[[Any], Any]] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 ledger: ExecutedLog | None = None,
                 stats: ReplicaStats | None = None,
                 also_in_flight: Callable[[], int] | None = None) -> None:
        """`stats`: where answered requests are counted and timed (hpcray/metrics), per
        thread; None records nothing. `also_in_flight`: the replica's requests on its other
        path (Serve's), added to this socket's in a ping's `in_flight`."""
        self.resolve = methods  # method name -> callable, raises ServiceRequestError
        self.resolve_stream = streams  # method name -> its generator function, likewise
        self.also_in_flight = also_in_flight
        self._service_loop = loop  # coroutines and async streams run here when given
        self.replica = replica.encode()
        self.info = info
        self.ledger = ledger  # records each request executed, when the run keeps ledgers
        self.ctx = zmq.Context()
        self.auth = None
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        # a send to a client that left raises (and is dropped), so its stream can be stopped
        self.router.router_mandatory = True
        if token:
            from zmq.auth.thread import ThreadAuthenticator

            self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("hpcray.zap"))
            self.auth.start()
            self.auth.configure_plain(domain="*", passwords={PLAIN_USER.decode(): token.decode()})
            self.router.plain_server = True
        host = host or bind_host()
        try:
            self.router.bind(f"tcp://{host}:0")
        except zmq.ZMQError:
            log.warning("cannot bind %s; serving the direct path on loopback only", host)
            self.router.bind("tcp://127.0.0.1:0")
        self.address = self.router.last_endpoint.decode()  # type: ignore[union-attr]  # bytes
        self.completions = self.ctx.socket(zmq.PULL)  # replies from the worker and the loop
        self.completions.bind(f"inproc://done-{id(self)}")
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's own, when needed
        self._forwarding = False  # replies also come from other threads (completions socket)
        self._streams: dict[tuple[bytes, bytes], Callable[[], Any]] = {}  # -> its stop
        # replies a client is not reading yet (its queue is full), in order, per (client, id);
        # a stream whose replies are held waits before it makes more
        self._held: dict[tuple[bytes, bytes], _Held] = {}
        self.stall_limit_s = STALL_LIMIT_S
        self.streams_waiting = 0  # streams whose generator waits for a slow reader now
        self._loop_push = threading.local()
        self._work: queue.SimpleQueue | None = None  # the worker thread's requests
        self._offloaded = 0  # requests on the worker, not yet replied (socket thread only)
        self._inline = 0  # 1 while a handler runs on the socket thread itself
        self.thread = threading.Thread(target=self._serve_forever, name="hpcray-direct",
                                       daemon=True)
        # requests answered, counted per thread that answers (no lost increments between
        # the socket thread, the worker, the event loop and streams), pings not included
        self._served = PerThread(Count)
        self._main_served = Count()  # the socket thread's, registered when it runs
        self._waiting_lock = threading.Lock()
        self.stats = stats
        self._main_stats: ServiceStats | None = None  # the socket thread's, set when it runs
        self._waiting: deque[tuple[int, list[bytes]]] = deque()  # received, not yet served
        self._async_sent = 0  # coroutines submitted (socket thread) ...
        self._async_done = 0  # ... and finished (their loop's thread): in flight = difference
        self._handlers: dict[str, list[Any]] = {}
        self._by_bytes: dict[bytes, list[Any]] = {}  # the same, keyed by the method's bytes

    def start(self) -> str:
        self.thread.start()
        return self.address

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def in_flight(self) -> int:
        """Requests received and not answered yet (the replica's queue depth): stamped and
        waiting for the socket thread, running on it, on the worker, on the event loop,
        streams running."""
        return (len(self._waiting) + self._offloaded + self._async_sent - self._async_done
                + len(self._streams) + self._inline)

    @property
    def served(self) -> int:
        """Requests answered so far (pings not counted)."""
        return sum(count.n for count in self._served.all())

    def _thread_stats(self) -> ServiceStats | None:
        """The calling thread's stats when recording, else None."""
        stats = self.stats
        if stats is None or not stats.on:
            return None
        return stats.for_thread()

    def stop(self, linger_ms: int = 0) -> None:
        """`linger_ms`: how long replies already queued may still take to leave (a drained
        replica's last ones); 0 drops them."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._work is not None:
            self._work.put(None)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=linger_ms)

    # -- the loop --------------------------------------------------------------------------
    def _serve_forever(self) -> None:
        router, completions = self.router, self.completions
        router.rcvtimeo = 100  # wake up to see a stop request
        poller = zmq.Poller()  # while replies can come from the worker or the event loop
        poller.register(router, zmq.POLLIN)
        poller.register(completions, zmq.POLLIN)
        waiting = self._waiting
        self._main_served = self._served.mine()
        if self.stats is not None:
            self._main_stats = self.stats.for_thread()
        clock = time.perf_counter_ns
        events, pollin, noblock = zmq.EVENTS, zmq.POLLIN, zmq.NOBLOCK
        recv = router.recv
        try:
            while not self._stop.is_set():
                if self._held:
                    self._offer_held()
                if self._forwarding or self._offloaded or self._held:
                    self._forward(completions)
                    if not waiting and not poller.poll(HELD_POLL_MS if self._held else 100):
                        continue
                elif not waiting:
                    try:
                        frames = [recv()]  # the client's identity; more frames follow
                    except zmq.Again:
                        continue
                    received = clock()
                    part = recv(copy=False)
                    while part.more:  # a REQ client's delimiter, or a malformed message
                        frames.append(part.bytes)
                        part = recv(copy=False)
                    frames.append(part.bytes)
                    self._serve_one(received, frames)
                    # After the reply left, not before it: whatever arrived meanwhile is
                    # stamped now, so its wait behind the others counts as service time.
                while router.get(events) & pollin:  # type: ignore[arg-type,operator]  # all waiting, stamped now
                    waiting.append((clock(), router.recv_multipart(noblock)))
                if waiting:
                    received, frames = waiting.popleft()
                    self._serve_one(received, frames)
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("direct server of replica %s stopped", self.replica.decode())
            raise

    def _forward(self, completions: zmq.Socket) -> None:
        while completions.get(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[arg-type]
            frames = completions.recv_multipart(zmq.NOBLOCK)
            if frames[0] == WORKER:
                self._offloaded -= 1
            if not self._route(frames[1:]) and frames[-1][6:7] == PIECE:
                self._stop_stream((frames[1], reply_id(frames[-1])), "its client is gone")

    def _route(self, frames: list[bytes]) -> bool:
        """Send a reply, or hold it while its client's queue is full (a slow reader: replies
        queued before it for the same request go first); False (dropped) when the client
        is gone."""
        if self._held:  # the common case, nothing held, costs one truth test
            held = self._held.get((frames[0], reply_id(frames[-1])))
            if held is not None:
                if not held.stalled:  # a stopped stream's late pieces are dropped
                    held.frames.append(frames)
                return True
        try:
            self.router.send_multipart(frames, _NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == errno.EAGAIN:
                self._held[(frames[0], reply_id(frames[-1]))] = _Held(frames)
                return True
            if exc.errno not in _GONE:
                raise
            return False

    def _offer_held(self) -> None:
        """Send what slow readers now have room for. A client gone drops its replies and
        stops its stream; one that reads nothing for `stall_limit_s` has its stream stopped
        and, once it reads again, is told why instead of the pieces it left."""
        now = time.monotonic()
        for key in list(self._held):
            held = self._held[key]
            try:
                while held.frames:
                    self.router.send_multipart(held.frames[0], _NOBLOCK)
                    held.frames.popleft()
                    held.since = now
            except zmq.ZMQError as exc:
                if exc.errno != errno.EAGAIN:
                    if exc.errno not in _GONE:
                        raise
                    del self._held[key]
                    self._stop_stream(key, "its client is gone")
                    continue
                # a running stream is stopped; a plain reply (or a stream's last) waits on
                if now - held.since > self.stall_limit_s and not held.stalled \
                        and key in self._streams:
                    held.stalled = True
                    self._stop_stream(key, "its client stopped reading")
                    first = held.frames[0]
                    message = (f"stream stopped: its client read nothing for "
                               f"{self.stall_limit_s:g} s").encode()
                    held.frames.clear()  # what it left is dropped; the reason goes instead
                    held.frames.append([*first[:-1], pack_reply(key[1], self.replica,
                                                                first[-1][5:6], FAILED, b"",
                                                                message)])
                continue
            del self._held[key]

    def _waiting_streams(self, change: int) -> None:
        with self._waiting_lock:
            self.streams_waiting += change

    def _reading(self, stream: _Stream) -> bool:
        """Whether the stream's client has room for more (no reply of it held)."""
        return not self._held or (stream.envelope[0], stream.request.id) not in self._held

    def _serve_one(self, received: int, frames: list[bytes]) -> None:
        """Answer one request. Written for the idle-replica latency: the header is read
        inline and nothing is built that the common case (msgpack, inline handler) skips."""
        clock = time.perf_counter_ns
        envelope = frames[:-1]  # the client's identity, and a REQ client's empty delimiter
        frame = frames[-1]
        if len(frame) < 10 or frame[:5] != b"HPR1Q" or frame[5:6] not in CODECS or not frame[7]:
            self._refuse_malformed(envelope, frame)
            return
        name_at = 10 + frame[7]
        data_at = name_at + (frame[8] | frame[9] << 8)
        if len(frame) < data_at:
            self._refuse_malformed(envelope, frame)
            return
        rid, codec_b = frame[10:name_at], frame[5:6]
        if frame[6] & STREAM_FLAG:
            self._start_stream(envelope, frame, received)
            return
        try:
            handler = self._by_bytes.get(frame[name_at:data_at])
            if handler is None:
                handler = self._handler(frame[name_at:data_at].decode())
                self._by_bytes[frame[name_at:data_at]] = handler
            if codec_b == b"m":
                payload = _unpackb(frame[data_at:], raw=False) if len(frame) > data_at else None
            else:
                payload = decode_payload(CODECS[codec_b], frame[data_at:])
        except Exception as exc:  # noqa: BLE001 - the client's mistake, answered as such
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self._count_error()
            self._send(envelope, rid, codec_b, REFUSED, b"", message.encode())
            return
        fn, is_async, average = handler
        if not is_async and average >= 0 and (self._offloaded or average > INLINE_LIMIT_NS):
            self._offload(handler, payload, envelope, unpack_request(frame), received)
            return
        start = clock()
        self._inline = 1  # in flight on this thread (a drain waits for it)
        try:
            result = fn(payload)
        except Exception as exc:  # noqa: BLE001 - the handler's failure, returned to the caller
            self._inline = 0
            self._fail(envelope, rid, codec_b, exc)
            return
        self._inline = 0
        if is_async or asyncio.iscoroutine(result):
            self._async_sent += 1
            self._submit(result, envelope, unpack_request(frame), received, start)
            return
        end = clock()
        if codec_b != b"m":
            self._reply(self._route, envelope, unpack_request(frame), result, received, start,
                        end, ping=average < 0)  # a ping is no request: not recorded
        else:
            try:
                body = _packb(result, use_bin_type=True)
            except Exception:  # noqa: BLE001 - _reply says why (and records it as failed)
                self._reply(self._route, envelope, unpack_request(frame), result, received,
                            start, end)
                return
            if self.ledger is not None and average >= 0:  # a ping is no request
                self.ledger.record(rid)
            st = self._main_stats
            record = st is not None and st.on and average >= 0  # a ping is no request
            timed = frame[6] & TIMING_FLAG
            # encoding: the service part, as the reply's timing says (read only when needed)
            after = clock() - end if timed or record else 0
            timing = _timing_pack(start - received, end - start, after) if timed else b""
            router = self.router
            reply = pack_reply(rid, self.replica, codec_b, OK, timing, body)
            try:
                for part in envelope:
                    router.send(part, _SNDMORE | _NOBLOCK)
                router.send(reply)
            except zmq.ZMQError as exc:  # the client left: nobody to answer
                if exc.errno == errno.EAGAIN:  # or reads slowly: held until it has room
                    self._held[(envelope[0], rid)] = _Held([*envelope, reply])
                elif exc.errno not in _GONE:
                    raise
            if average >= 0:  # a ping is no request
                self._main_served.n += 1
            if record:
                st.observe(start - received + after, end - start)  # type: ignore[union-attr]
        if average >= 0:  # after the reply: the moving average of the handler's run time
            handler[2] = average + (end - start - average) * 0.2

    def _refuse_malformed(self, envelope: list[bytes], frame: bytes) -> None:
        try:
            unpack_request(frame)
            reason = "malformed header"
        except (ProtocolError, UnicodeDecodeError) as exc:
            reason = str(exc)
        self._send(envelope, b"?", b"m", REFUSED, b"",
                   f"not an HPR1 request ({reason}); see docs/direct-protocol.md".encode())

    def _handler(self, method: str) -> list[Any]:
        """[callable, is a coroutine function, moving-average run time in ns]."""
        cached = self._handlers.get(method)
        if cached is None:
            fn = self._ping if method == PING else self.resolve(method)
            # .ping never touches the model: always answered at once, never offloaded
            cached = self._handlers[method] = [fn, inspect.iscoroutinefunction(fn),
                                               -1.0 if method == PING else 0.0]
        return cached

    # -- slow synchronous handlers: one worker thread -----------------------------------------
    def _offload(self, handler, payload, envelope, request, received) -> None:
        if self._work is None:
            self._work = queue.SimpleQueue()
            threading.Thread(target=self._work_forever, name="hpcray-direct-worker",
                             daemon=True).start()
        self._offloaded += 1
        self._work.put((handler, payload, envelope, request, received))

    def _work_forever(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.connect(f"inproc://done-{id(self)}")

        def send(frames: list[bytes]) -> None:
            push.send_multipart([WORKER, *frames])

        clock = time.perf_counter_ns
        try:
            while True:
                item = self._work.get()  # type: ignore[union-attr]  # set before the thread starts
                if item is None:
                    return
                handler, payload, envelope, request, received = item
                start = clock()
                try:
                    result = handler[0](payload)
                except Exception as exc:  # noqa: BLE001 - returned to the caller
                    self._fail(envelope, request.id, request.codec, exc, send=send)
                    continue
                end = clock()
                handler[2] += (end - start - handler[2]) * 0.2
                self._reply(send, envelope, request, result, received, start, end)
        except zmq.ContextTerminated:
            pass
        finally:
            push.close(linger=0)

    def _reply(self, send, envelope, request, result, received, start, end,
               ping: bool = False) -> None:
        """`ping`: a ping, which no ledger records (it is no request)."""
        ledger = None if ping else self.ledger
        try:
            body = encode(CODECS[request.codec], result)
        except Exception as exc:  # noqa: BLE001
            if ledger is not None:
                ledger.record(request.id, ok=False)
            self._count_error()
            send([*envelope, pack_reply(request.id, self.replica, request.codec, FAILED, b"",
                                        f"the result cannot be sent with codec "
                                        f"{CODECS[request.codec]}: {exc}".encode())])
            return
        if ledger is not None:
            ledger.record(request.id)
        timing = TIMING.pack(start - received, end - start, time.perf_counter_ns() - end) \
            if request.timed else b""
        send([*envelope, pack_reply(request.id, self.replica, request.codec, OK, timing, body)])
        if not ping:
            self._served.mine().n += 1
            st = self._thread_stats()
            if st is not None:
                st.observe(start - received + time.perf_counter_ns() - end, end - start)

    def _count_error(self) -> None:
        st = self._thread_stats()
        if st is not None:
            st.errors += 1

    def _fail(self, envelope, rid, codec_b, exc: BaseException, send=None) -> None:
        if self.ledger is not None:
            self.ledger.record(rid, ok=False)
        self._count_error()
        status, message = _failure(exc)
        self._send(envelope, rid, codec_b, status, b"", message, send=send)

    def _send(self, envelope, rid, codec_b, status, timing, body, send=None) -> None:
        (send or self._route)(
            [*envelope, pack_reply(rid, self.replica, codec_b, status, timing, body)])

    def _ping(self, _payload: Any) -> dict[str, Any]:
        """Who the replica is, what it answered, and what it holds now (the autoscaler's
        load figure: read at the moment asked, on the socket thread, never queued)."""
        also = self.also_in_flight() if self.also_in_flight is not None else 0
        # this ping runs on the socket thread (counted in `_inline`): not a request
        return {**self.info, "served": self.served,
                "in_flight": self.in_flight - self._inline + also}

    def drain(self, timeout: float, quiet: float = DRAIN_QUIET_S) -> bool:
        """Wait, at most `timeout` seconds, until this replica owes nothing: no request in
        flight, no reply held for a slow reader, and no answer sent for `quiet` seconds (the
        last ones are on their way; a request a client sent before it learned of the drain
        has arrived). Called once clients were told to send nothing new (the directory's
        drain), before `stop`. False if requests were still held at the timeout."""
        deadline = time.monotonic() + timeout
        last, still_since = self.served, time.monotonic()
        while True:
            now, served = time.monotonic(), self.served
            if served != last or self.in_flight or self._held:
                last, still_since = served, now
            elif now - still_since >= quiet:
                return True
            if now >= deadline:
                return not self.in_flight and not self._held
            time.sleep(DRAIN_POLL_S)

    # -- coroutine handlers ------------------------------------------------------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The service's loop, else the server's own (started on first use)."""
        self._forwarding = True
        if self._service_loop is not None:
            return self._service_loop
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="hpcray-direct-async",
                             daemon=True).start()
        return self._loop

    def _submit(self, coro, envelope, request, received, start) -> None:
        loop = self._event_loop()

        def done(future) -> None:  # runs on the event loop's thread
            self._async_done += 1
            send = self._push()
            exc = future.exception()
            if exc is not None:
                self._fail(envelope, request.id, request.codec, exc,
                           send=send)
            else:
                result, end, began = future.result(), time.perf_counter_ns(), start
                if isinstance(result, ServerTimed):  # the server's own split
                    began = max(start, end - int(result.inference_s * 1e9))
                    result = result.value
                self._reply(send, envelope, request, result, received, began, end)

        asyncio.run_coroutine_threadsafe(coro, loop).add_done_callback(done)

    def _push(self):
        """A PUSH socket of the thread running the callback (sockets are single-threaded)."""
        sock = getattr(self._loop_push, "sock", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.connect(f"inproc://done-{id(self)}")
            self._loop_push.sock = sock
        return lambda frames: sock.send_multipart([LOOP, *frames])

    # -- streams -----------------------------------------------------------------------------
    def _start_stream(self, envelope: list[bytes], frame: bytes, received: int) -> None:
        request = unpack_request(frame)
        key = (envelope[0], request.id)
        if request.method == CANCEL:
            self._stop_stream(key, "cancelled by its client")
            return
        try:
            if self.resolve_stream is None:
                raise ValueError("this replica serves no streams")
            make = self.resolve_stream(request.method)
            payload = decode_payload(CODECS[request.codec], request.payload)
        except Exception as exc:  # noqa: BLE001 - the client's mistake, answered as such
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self._send(envelope, request.id, request.codec, REFUSED, b"", message.encode())
            return
        start = time.perf_counter_ns()
        try:
            pieces = make(payload)
        except Exception as exc:  # noqa: BLE001 - the handler's failure, returned to the caller
            self._fail(envelope, request.id, request.codec, exc)
            return
        stream = _Stream(envelope, request, received, start)
        if hasattr(pieces, "__aiter__"):
            future = asyncio.run_coroutine_threadsafe(self._pump_async(pieces, stream),
                                                      self._event_loop())
            self._streams[key] = future.cancel
            future.add_done_callback(lambda _: self._streams.pop(key, None))
        elif hasattr(pieces, "__next__"):
            self._forwarding = True
            stop = threading.Event()
            self._streams[key] = stop.set
            threading.Thread(target=self._pump_sync, args=(pieces, stream, stop, key),
                             name="hpcray-direct-stream", daemon=True).start()
        else:
            if self.ledger is not None:
                self.ledger.record(request.id, ok=False)
            self._send(envelope, request.id, request.codec, FAILED, b"",
                       f"{request.method}_stream returned {type(pieces).__name__}, not a "
                       "generator".encode())

    def _stop_stream(self, key: tuple[bytes, bytes], why: str) -> None:
        stop = self._streams.pop(key, None)
        if stop is not None:
            log.debug("stream %s stopped: %s", key[1].decode(errors="replace"), why)
            stop()

    def _piece(self, stream: _Stream, piece: Any) -> list[bytes]:
        request = stream.request
        return [*stream.envelope, pack_reply(request.id, self.replica, request.codec, PIECE, b"",
                                             encode(CODECS[request.codec], piece))]

    async def _pump_async(self, pieces, stream: _Stream) -> None:
        """Runs on the event loop; cancelled (at its next await) when the stream stops, which
        raises CancelledError inside the service's generator: an engine aborts the request."""
        send = self._push()
        request = stream.request
        try:
            async for piece in pieces:
                send(self._piece(stream, piece))
                if not self._reading(stream):  # a slow reader: wait, do not pile up
                    self._waiting_streams(+1)
                    try:
                        while not self._reading(stream):
                            await asyncio.sleep(HELD_POLL_MS / 1000)
                    finally:
                        self._waiting_streams(-1)
        except asyncio.CancelledError:
            await pieces.aclose()
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's failure, returned to the caller
            await pieces.aclose()
            self._fail(stream.envelope, request.id, request.codec, exc,
                       send=send)
            return
        self._reply(send, stream.envelope, request, None, stream.received, stream.start,
                    time.perf_counter_ns())

    def _pump_sync(self, pieces, stream: _Stream, stop: threading.Event, key) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.connect(f"inproc://done-{id(self)}")

        def send(frames: list[bytes]) -> None:
            push.send_multipart([LOOP, *frames])

        request = stream.request
        try:
            for piece in pieces:
                if stop.is_set():
                    return
                send(self._piece(stream, piece))
                if not self._reading(stream):  # a slow reader: wait, do not pile up
                    self._waiting_streams(+1)
                    try:
                        while not self._reading(stream) and not stop.wait(HELD_POLL_MS / 1000):
                            pass
                    finally:
                        self._waiting_streams(-1)
            if not stop.is_set():
                self._reply(send, stream.envelope, request, None, stream.received, stream.start,
                            time.perf_counter_ns())
        except zmq.ContextTerminated:
            pass
        except Exception as exc:  # noqa: BLE001 - the handler's failure, returned to the caller
            self._fail(stream.envelope, request.id, request.codec, exc,
                       send=send)
        finally:
            self._streams.pop(key, None)
            pieces.close()
            push.close(linger=0)


def _describe(exc: BaseException) -> bytes:
    return f"{type(exc).__name__}: {exc}".encode()


def _failure(exc: BaseException) -> tuple[bytes, bytes]:
    """(status, message) for a handler's exception: its refusal of the request (the
    caller's fault) is sent as refused, anything else as failed."""
    if isinstance(exc, ServiceRequestError):
        return REFUSED, str(exc).encode()
    return FAILED, _describe(exc)


class _Held:
    """Replies of one request waiting for their client to read: since when nothing of them
    went out, and whether the stream was stopped for it."""

    __slots__ = ("frames", "since", "stalled")

    def __init__(self, frames: list[bytes]) -> None:
        self.frames: deque[list[bytes]] = deque([frames])
        self.since = time.monotonic()
        self.stalled = False


class _Stream:
    """What a stream's pump needs: where to send, and the request it answers."""

    __slots__ = ("envelope", "received", "request", "start")

    def __init__(self, envelope, request, received: int, start: int) -> None:
        self.envelope, self.request = envelope, request
        self.received, self.start = received, start
