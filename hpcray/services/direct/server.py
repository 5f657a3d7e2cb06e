"""The replica side of the direct path: a ROUTER socket served by one thread of the replica.

Synchronous handlers run on that thread one request at a time (the lowest latency; a replica
is one model instance); coroutine handlers run concurrently on a private event loop, for
engines that batch (vLLM). Every message is stamped when taken off the socket, so time spent
queued behind other requests counts as service time, not communication.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from hpcray.bootstrap.network import NODE_IP_ENV
from hpcray.services.direct.protocol import (
    CODECS,
    FAILED,
    OK,
    PING,
    REFUSED,
    TIMING,
    ProtocolError,
    encode,
    pack_reply,
    unpack_request,
)
from hpcray.services.direct.protocol import decode as decode_payload

log = logging.getLogger("hpcray.services.direct")

PLAIN_USER = b"hpcray"


def run_token() -> bytes | None:
    """The run's secret (the Ray token file the node agent points every process at)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
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
                 token: bytes | None = None) -> None:
        self.resolve = methods  # method name -> callable, raises ServiceRequestError
        self.replica = replica.encode()
        self.info = info
        self.ctx = zmq.Context()
        self.auth = None
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.router_mandatory = False  # a client that left: its reply is dropped
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
        self.address = self.router.last_endpoint.decode()
        self.completions = self.ctx.socket(zmq.PULL)  # replies of coroutine handlers
        self.completions.bind(f"inproc://done-{id(self)}")
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_push = threading.local()
        self.thread = threading.Thread(target=self._serve_forever, name="hpcray-direct",
                                       daemon=True)
        self.served = 0

    def start(self) -> str:
        self.thread.start()
        return self.address

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)

    # -- the loop --------------------------------------------------------------------------
    def _serve_forever(self) -> None:
        router, completions = self.router, self.completions
        router.rcvtimeo = 100  # wake up to see a stop request
        poller = zmq.Poller()  # only once a coroutine handler ran: replies arrive from its loop
        poller.register(router, zmq.POLLIN)
        poller.register(completions, zmq.POLLIN)
        queue: deque[tuple[int, list[bytes]]] = deque()
        clock = time.perf_counter_ns
        events, pollin, noblock = zmq.EVENTS, zmq.POLLIN, zmq.NOBLOCK
        try:
            while not self._stop.is_set():
                if self._loop is not None:
                    self._forward(completions)
                    if not queue and not poller.poll(100):
                        continue
                elif not queue:
                    try:
                        frames = router.recv_multipart()
                    except zmq.Again:
                        continue
                    queue.append((clock(), frames))
                while router.get(events) & pollin:  # everything waiting, stamped now
                    queue.append((clock(), router.recv_multipart(noblock)))
                if queue:
                    received, frames = queue.popleft()
                    self._serve_one(received, frames)
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("direct server of replica %s stopped", self.replica.decode())
            raise

    def _forward(self, completions: zmq.Socket) -> None:
        while completions.get(zmq.EVENTS) & zmq.POLLIN:
            self.router.send_multipart(completions.recv_multipart(zmq.NOBLOCK))

    def _serve_one(self, received: int, frames: list[bytes]) -> None:
        clock = time.perf_counter_ns
        envelope = frames[:-1]  # the client's identity, and a REQ client's empty delimiter
        try:
            request = unpack_request(frames[-1])
        except (ProtocolError, UnicodeDecodeError) as exc:
            self._send(envelope, b"?", b"m", REFUSED, b"",
                       f"not an HPR1 request ({exc}); see docs/direct-protocol.md".encode())
            return
        rid, codec_b = request.id, request.codec
        try:
            fn: Callable[[Any], Any] = self._ping if request.method == PING else \
                self.resolve(request.method)
            payload = decode_payload(CODECS[codec_b], request.payload)
        except Exception as exc:  # noqa: BLE001 - the client's mistake, answered as such
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self._send(envelope, rid, codec_b, REFUSED, b"", message.encode())
            return
        start = clock()
        try:
            result = fn(payload)
        except Exception as exc:  # noqa: BLE001 - the handler's failure, returned to the caller
            self._send(envelope, rid, codec_b, FAILED, b"", _describe(exc))
            return
        if asyncio.iscoroutine(result):
            self._submit(result, envelope, request, received, start)
            return
        self._reply(self.router.send_multipart, envelope, request, result, received, start,
                    clock())

    def _reply(self, send, envelope, request, result, received, start, end) -> None:
        try:
            body = encode(CODECS[request.codec], result)
        except Exception as exc:  # noqa: BLE001
            send([*envelope, pack_reply(request.id, self.replica, request.codec, FAILED, b"",
                                        f"the result cannot be sent with codec "
                                        f"{CODECS[request.codec]}: {exc}".encode())])
            return
        timing = TIMING.pack(start - received, end - start, time.perf_counter_ns() - end) \
            if request.timed else b""
        send([*envelope, pack_reply(request.id, self.replica, request.codec, OK, timing, body)])
        self.served += 1

    def _send(self, envelope, rid, codec_b, status, timing, body, send=None) -> None:
        (send or self.router.send_multipart)(
            [*envelope, pack_reply(rid, self.replica, codec_b, status, timing, body)])

    def _ping(self, _payload: Any) -> dict[str, Any]:
        return {**self.info, "served": self.served}

    # -- coroutine handlers ------------------------------------------------------------------
    def _submit(self, coro, envelope, request, received, start) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="hpcray-direct-async",
                             daemon=True).start()

        def done(future) -> None:  # runs on the event loop's thread
            send = self._push()
            exc = future.exception()
            if exc is not None:
                self._send(envelope, request.id, request.codec, FAILED, b"", _describe(exc),
                           send=send)
            else:
                self._reply(send, envelope, request, future.result(), received, start,
                            time.perf_counter_ns())

        asyncio.run_coroutine_threadsafe(coro, self._loop).add_done_callback(done)

    def _push(self):
        """A PUSH socket of the thread running the callback (sockets are single-threaded)."""
        sock = getattr(self._loop_push, "sock", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.connect(f"inproc://done-{id(self)}")
            self._loop_push.sock = sock
        return sock.send_multipart


def _describe(exc: BaseException) -> bytes:
    return f"{type(exc).__name__}: {exc}".encode()
