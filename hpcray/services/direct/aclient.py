"""The direct path for a program that runs an event loop (the run's OpenAI API): one socket per
replica carries every request of the loop at once, and a reader task hands each reply to the
request it answers, by id. Replicas come from the run's directory, as for DirectClient; the
same power-of-two choice picks one per request. A request whose replica goes away is sent to
another (a stream only before its first piece); closing a stream early cancels it on the
replica, which aborts the engine's work."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from hpcray.runtime.balance import pick_two
from hpcray.services.direct.client import (
    LOST_EVENTS,
    ReplicaLost,
    ServiceTimeout,
    open_replicas,
    raise_for,
)
from hpcray.services.direct.protocol import (
    CANCEL,
    OK,
    PIECE,
    Reply,
    pack_request,
    reply_id,
    unpack_reply,
)
from hpcray.services.direct.server import PLAIN_USER, run_token

log = logging.getLogger("hpcray.services.direct")

SEND_TIMEOUT_S = 5.0  # a replica that does not take a request this long is treated as lost
_LOST = object()


class _Conn:
    """One replica's socket, shared by every request of the loop; replies go to the queue of
    the request whose id they carry."""

    def __init__(self, ctx: zmq.asyncio.Context, replica: str, address: str,
                 token: bytes | None) -> None:
        self.replica = replica
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.immediate = True
        if token:
            self.sock.plain_username = PLAIN_USER
            self.sock.plain_password = token
        self.monitor = self.sock.get_monitor_socket(LOST_EVENTS)
        self.sock.connect(address)
        self.waiting: dict[bytes, asyncio.Queue] = {}
        self.lost: str | None = None
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._watch())]

    async def _read(self) -> None:
        with contextlib.suppress(zmq.ZMQError, asyncio.CancelledError):
            while True:
                frame = await self.sock.recv()
                queue = self.waiting.get(reply_id(frame))
                if queue is not None:
                    queue.put_nowait(frame)

    async def _watch(self) -> None:
        with contextlib.suppress(zmq.ZMQError, asyncio.CancelledError):
            while self.lost is None:
                event = parse_monitor_message(await self.monitor.recv_multipart())["event"]
                if event == zmq.EVENT_DISCONNECTED:
                    self.fail("connection closed")
                elif event & LOST_EVENTS:
                    self.fail("authentication failed (wrong run token?)")

    def fail(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        for queue in self.waiting.values():
            queue.put_nowait(_LOST)

    async def send(self, frame: bytes) -> bool:
        try:
            await asyncio.wait_for(self.sock.send(frame), SEND_TIMEOUT_S)
            return True
        except (asyncio.TimeoutError, zmq.ZMQError):
            self.fail(self.lost or "cannot connect")
            return False

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class AsyncDirectClient:
    def __init__(self, service: str, *, directory: Any = None, retries: int = 2,
                 replica_wait_s: float = 30.0, addresses: dict[str, str] | None = None,
                 token: bytes | None = None, codec: str = "msgpack") -> None:
        """Make it on the loop that will use it. `addresses` ({replica: tcp://host:port})
        fixes the replica set without Ray (tests, programs outside the cluster)."""
        self.service = service
        self.retries = retries
        self.replica_wait_s = replica_wait_s
        self.codec = codec
        self._directory = directory
        self._ctx = zmq.asyncio.Context()
        self._token = token if token is not None else run_token()
        self._conns: dict[str, _Conn] = {}
        self._outstanding: defaultdict[str, int] = defaultdict(int)
        self._ids = itertools.count()
        self._prefix = os.urandom(4).hex()
        self.table: dict[str, dict[str, Any]] = {}
        self.version = -1
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task | None = None
        if addresses is not None:
            self._apply({"version": 0, "replicas": [{"replica": r, "address": a, "node": None}
                                                    for r, a in addresses.items()]})

    # -- the replica table ---------------------------------------------------------------------
    def _apply(self, described: dict[str, Any]) -> None:
        self.version = described["version"]
        self.table = {r["replica"]: r for r in described["replicas"]}
        for replica in [r for r in self._conns if r not in self.table]:
            self._conns.pop(replica).fail("removed")
        self._changed.set()
        self._changed = asyncio.Event()

    async def _follow(self) -> None:
        """Long-poll the directory: restarts, scale-ups and lost replicas reach this loop."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                try:
                    self._apply(await self._directory.watch.remote(self.service, self.version,
                                                                   10.0))
                except Exception as exc:  # noqa: BLE001 - the cluster is going away
                    log.debug("directory watch for %s ended: %s", self.service, exc)
                    return

    async def _replica(self, tried: list[str], wait_s: float | None = None) -> str:
        if self._directory is not None and self._watcher is None:
            self._apply(await self._directory.describe.remote(self.service))
            self._watcher = asyncio.ensure_future(self._follow())
        wait_s = self.replica_wait_s if wait_s is None else wait_s
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:  # Serve restarts lost replicas: wait for one
            replica = pick_two(open_replicas(self.table), self._outstanding.__getitem__,
                               exclude=tried)
            if replica is not None:
                return replica
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise ReplicaLost(f"service {self.service!r}: no replica to send the request "
                                  f"to within {wait_s:g}s"
                                  + (f" (tried {', '.join(tried)})" if tried else ""),
                                  tried[-1] if tried else None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    def _conn(self, replica: str) -> _Conn:
        conn = self._conns.get(replica)
        if conn is None or conn.lost is not None:
            if conn is not None:
                conn.close()
            conn = self._conns[replica] = _Conn(self._ctx, replica,
                                                self.table[replica]["address"], self._token)
        return conn

    def _lost(self, conn: _Conn) -> None:
        self.table.pop(conn.replica, None)
        if self._directory is not None:
            self._directory.report_lost.remote(self.service, conn.replica)

    # -- requests ------------------------------------------------------------------------------
    async def _open(self, rid: bytes, tried: list[str], wait_s: float | None = None
                    ) -> tuple[str, _Conn, asyncio.Queue]:
        """A replica not tried yet, its connection, and the queue its replies to `rid` go
        to; the caller pops the queue and the outstanding count when done."""
        replica = await self._replica(tried, wait_s)
        conn = self._conn(replica)
        queue: asyncio.Queue = asyncio.Queue()
        conn.waiting[rid] = queue
        self._outstanding[replica] += 1
        return replica, conn, queue

    async def call(self, method: str, payload: Any = None, *, timeout: float | None = None,
                   replica_wait_s: float | None = None) -> Reply:
        """One request; `replica_wait_s` (default: the client's) bounds the wait for a
        replica when none is there (Serve restarting one, or the service gone)."""
        rid = f"{self._prefix}-{next(self._ids)}".encode()
        frame = pack_request(rid, method, payload, codec=self.codec)
        tried: list[str] = []
        loop = asyncio.get_running_loop()
        while True:
            replica, conn, queue = await self._open(rid, tried, replica_wait_s)
            try:
                start = loop.time()
                if await conn.send(frame):
                    try:
                        got = await asyncio.wait_for(queue.get(), timeout)
                    except asyncio.TimeoutError:
                        raise ServiceTimeout(f"service {self.service!r}: no reply to request "
                                             f"{rid.decode()} from replica {replica} within "
                                             f"{timeout}s", replica) from None
                    if got is not _LOST:
                        return raise_for(self.service, unpack_reply(got, loop.time() - start))
            finally:
                conn.waiting.pop(rid, None)
                self._outstanding[replica] -= 1
            tried.append(replica)
            self._lost(conn)
            if len(tried) > self.retries:
                raise ReplicaLost(f"service {self.service!r}: request {rid.decode()} lost with "
                                  f"replica {replica} ({conn.lost})", replica)

    async def stream(self, method: str, payload: Any = None) -> AsyncIterator[Any]:
        """The pieces of `<method>_stream`; closing this early cancels it on the replica."""
        rid = f"{self._prefix}-{next(self._ids)}".encode()
        frame = pack_request(rid, method, payload, codec=self.codec, stream=True)
        tried: list[str] = []
        loop = asyncio.get_running_loop()
        while True:
            replica, conn, queue = await self._open(rid, tried)
            given, finished = 0, False
            try:
                start = loop.time()
                if await conn.send(frame):
                    while (got := await queue.get()) is not _LOST:
                        reply = unpack_reply(got, loop.time() - start)
                        if reply.status == PIECE:
                            given += 1
                            yield reply.payload
                            continue
                        finished = True
                        if reply.status != OK:
                            raise_for(self.service, reply)
                        return
            finally:
                conn.waiting.pop(rid, None)
                self._outstanding[replica] -= 1
                if not finished and conn.lost is None:  # abandoned: stop it on the replica
                    with contextlib.suppress(zmq.ZMQError):
                        conn.sock.send(pack_request(rid, CANCEL, None, stream=True),
                                       zmq.NOBLOCK)
            tried.append(replica)
            self._lost(conn)
            if given or len(tried) > self.retries:
                raise ReplicaLost(f"service {self.service!r}: stream {rid.decode()} lost with "
                                  f"replica {replica} ({conn.lost}) after {given} piece(s)",
                                  replica)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for conn in self._conns.values():
            conn.close()
        self._ctx.destroy(linger=0)
