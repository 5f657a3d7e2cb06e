"""The client side of the direct path: requests go straight to a replica's socket.

Load balancing is client-side: power-of-two choices on requests outstanding from this
process. Sockets are per thread (ZeroMQ sockets are single-threaded), so threads never wait on
each other; `call_many` keeps a window of requests in flight over those connections.
A replica whose connection drops, or that the directory reports gone, has its in-flight
requests sent to another replica (`retries`), or failed with an error naming the replica:
never dropped. A stream is retried elsewhere only before its first piece arrived; after that,
losing its replica fails it (the pieces already given cannot be taken back). A replica that
drains (scale-down) gets no new requests, but its answers are still awaited: nothing it
holds is sent a second time."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from hpcray.errors import (
    HpcrayError,
    ReplicaLost,
    ServiceCallError,
    ServiceRequestError,
    ServiceTimeout,
)
from hpcray.metrics.recorder import ClientStats, client_metrics
from hpcray.runtime.balance import pick_two
from hpcray.services.direct.protocol import (
    CANCEL,
    OK,
    PIECE,
    PING,
    REFUSED,
    Reply,
    pack_request,
    reply_id,
    unpack_reply,
)
from hpcray.services.direct.server import PLAIN_USER, run_token

log = logging.getLogger("hpcray.services.direct")

POLL_MS = 50  # how often a waiting caller checks whether its replica is still there
LOST_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass
class _Conn:
    replica: str
    sock: zmq.Socket
    monitor: zmq.Socket
    lost: str | None = None

    def check(self) -> str | None:
        """Why this connection is unusable (from its monitor's events), else None."""
        while self.lost is None and self.monitor.poll(0):
            from zmq.utils.monitor import recv_monitor_message

            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.lost = "connection closed"
            elif event & LOST_EVENTS:
                self.lost = "authentication failed (wrong run token?)"
        return self.lost

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


@dataclass
class _InFlight:
    index: int
    request_id: bytes
    frame: bytes
    replica: str = ""
    sent: float = 0.0
    tried: list[str] = field(default_factory=list)


class DirectClient:
    def __init__(self, service: str, *, directory: Any = None, retries: int = 2,
                 replica_wait_s: float = 30.0, codec: str = "msgpack", timing: bool = True,
                 watch: bool = True, addresses: dict[str, str] | None = None,
                 token: bytes | None = None) -> None:
        """`addresses` ({replica: tcp://host:port}) fixes the replica set without Ray: for a
        program outside the cluster that read endpoints.json, and for tests."""
        self.service = service
        self.retries = retries
        self.replica_wait_s = replica_wait_s
        self.codec = codec
        self.timing = timing
        if addresses is None:
            from hpcray.services.direct.directory import directory as find_directory

            self._directory = directory or find_directory()
            if self._directory is None:
                raise HpcrayError(f"service {service!r}: no replica directory in this cluster "
                                  "(services start through hpcray's ServiceManager)")
        else:
            self._directory = None
            watch = False
        self._ctx = zmq.Context()
        self._token = token if token is not None else run_token()
        self._local = threading.local()
        self._outstanding: defaultdict[str, int] = defaultdict(int)
        self._changed = threading.Condition()
        self._ids = itertools.count()
        self._prefix = os.urandom(4).hex()
        self._prefix_b = self._prefix.encode()
        self._closed = False
        self._why: dict[str, str] = {}  # replica -> why it was given up on
        # the communication part of each request, for the head's Prometheus endpoint; None
        # outside a run or with metrics off
        self._metrics = client_metrics()
        self.last_stream: Reply | None = None  # the final reply of the last finished stream
        if addresses is None:
            self.refresh()
        else:
            self._apply({"transport": "direct", "version": 0, "replicas": [
                {"replica": r, "address": a, "node": None} for r, a in addresses.items()]})
        self._watching = watch
        if watch:
            self._watch()

    # -- replica table ---------------------------------------------------------------------
    def _apply(self, described: dict[str, Any]) -> None:
        with self._changed:
            self.transport = described["transport"]
            self.version = described["version"]
            self.table = {r["replica"]: r for r in described["replicas"]}
            self._choices = open_replicas(self.table)
            self._changed.notify_all()

    def _watch(self) -> None:
        """Long-poll the directory without a thread of ours blocked in Ray: the reply's
        future re-arms the watch (a thread parked in ray.get breaks interpreter exit)."""
        if self._closed:
            return
        future = self._directory.watch.remote(self.service, self.version, 10.0).future()
        future.add_done_callback(self._watched)

    def _watched(self, future) -> None:
        try:
            self._apply(future.result())
        except Exception as exc:  # noqa: BLE001 - cluster going away: stop watching
            if not self._closed:
                log.debug("directory watch for %s ended: %s", self.service, exc)
            return
        self._watch()

    @property
    def replicas(self) -> list[str]:
        return list(self._choices)

    def refresh(self) -> None:
        if self._directory is None:
            return
        import ray

        self._apply(ray.get(self._directory.describe.remote(self.service)))

    def _report(self, replica: str, why: str | None = None) -> None:
        self._why[replica] = why or "lost"
        with self._changed:
            if replica in self.table:
                del self.table[replica]
                self._choices = open_replicas(self.table)
        if self._directory is not None:
            self._directory.report_lost.remote(self.service, replica)

    def _pick(self, exclude: list[str]) -> str | None:
        """A replica not tried yet, by requests outstanding from this process."""
        return pick_two(self._choices, self._outstanding.__getitem__, exclude=exclude)

    def _await_replica(self, exclude: list[str], deadline: float | None) -> str:
        """Wait for a replica not tried yet (Serve restarts lost ones)."""
        limit = time.monotonic() + self.replica_wait_s
        if deadline is not None:
            limit = min(limit, deadline)
        with self._changed:
            while True:
                replica = self._pick(exclude)
                if replica is not None:
                    return replica
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 1.0))
                if not self._watching and self._directory is not None:
                    self._changed.release()
                    try:
                        self.refresh()
                    finally:
                        self._changed.acquire()
        lost = ", ".join(f"{r}: {self._why.get(r, 'lost')}" for r in exclude)
        raise ReplicaLost(f"service {self.service!r}: no replica to send the request to"
                          + (f" (lost {lost})" if exclude else "")
                          + f" within {self.replica_wait_s:g}s", exclude[-1] if exclude else None)

    # -- connections ------------------------------------------------------------------------
    def _conn(self, replica: str) -> _Conn | None:
        """This thread's connection to the replica; None if the replica just left the table."""
        conns: dict[str, _Conn] = self._local.__dict__.setdefault("conns", {})
        if replica in conns and conns[replica].lost is None and replica in self.table:
            return conns[replica]
        conn = conns.get(replica)
        if conn is not None and conn.lost is None:
            return conn
        if conn is not None:
            conn.close()
        for gone in [r for r in conns if r not in self.table]:
            conns.pop(gone).close()
        entry = self.table.get(replica)
        if entry is None:
            return None
        conn = conns[replica] = self._connect(replica, entry["address"])
        return conn

    def _connect(self, replica: str, address: str) -> _Conn:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.immediate = True  # never queue for a peer that is not connected
        if self._token:
            sock.plain_username = PLAIN_USER
            sock.plain_password = self._token
        sock.rcvtimeo = POLL_MS  # a waiting caller wakes up to check on the replica
        monitor = sock.get_monitor_socket(LOST_EVENTS)
        sock.connect(address)
        return _Conn(replica, sock, monitor)

    def _send(self, conn: _Conn, frame: bytes) -> bool:
        try:
            conn.sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected yet (first use) or no longer
            if conn.sock.poll(2000, zmq.POLLOUT) and conn.check() is None:
                conn.sock.send(frame, zmq.NOBLOCK)
                return True
            conn.lost = conn.check() or "cannot connect"
            return False

    # -- calls ------------------------------------------------------------------------------
    def _request_id(self, given: str | None) -> bytes:
        return (given if given is not None else f"{self._prefix}-{next(self._ids)}").encode()

    def call(self, method: str, payload: Any = None, *, request_id: str | None = None,
             timeout: float | None = None) -> Reply:
        rid = request_id.encode() if request_id is not None else \
            b"%s-%d" % (self._prefix_b, next(self._ids))
        frame = pack_request(rid, method, payload, codec=self.codec, timing=self.timing)
        deadline = None if timeout is None else time.monotonic() + timeout
        tried: list[str] = []
        perf = time.perf_counter
        outstanding = self._outstanding
        local = self._local
        try:
            conns = local.conns
        except AttributeError:
            conns = local.conns = {}
        while True:
            choices = self._choices
            replica = choices[0] if len(choices) == 1 and not tried else \
                (self._pick(tried) or self._await_replica(tried, deadline))
            conn = conns.get(replica)
            if conn is None or conn.lost is not None:
                conn = self._conn(replica)
                if conn is None:
                    continue
            outstanding[replica] += 1
            try:
                start = perf()
                try:
                    conn.sock.send(frame, zmq.NOBLOCK)
                    sent = True
                except zmq.Again:
                    sent = self._send(conn, frame)
                why = None if sent else conn.lost
                recv = conn.sock.recv
                while sent:
                    try:
                        reply = recv()
                    except zmq.Again:  # nothing within POLL_MS: is the replica still there?
                        why = conn.check() or (None if replica in self.table else "removed")
                        if why:
                            break
                        if deadline is not None and time.monotonic() > deadline:
                            raise ServiceTimeout(
                                f"service {self.service!r}: no reply to request "
                                f"{rid.decode()} from replica {replica} within {timeout}s",
                                replica) from None
                        continue
                    if reply_id(reply) == rid:
                        result = unpack_reply(reply, perf() - start)
                        metrics = self._metrics
                        if metrics is not None and metrics.on:
                            try:
                                stats = local.stats
                            except AttributeError:
                                stats = self._stats()
                            stats.observe(result.round_trip_s, result._ns)
                        return result if result.status == OK else self._result(result)
                    # else: the late reply of an earlier, abandoned request
            finally:
                outstanding[replica] -= 1
            tried.append(replica)
            self._report(replica, why)
            if len(tried) > self.retries:
                raise ReplicaLost(f"service {self.service!r}: request {rid.decode()} lost with "
                                  f"replica {replica} ({why}) after {len(tried)} attempt(s)",
                                  replica)
            log.warning("service %s: replica %s lost (%s); request %s goes to another replica",
                        self.service, replica, why, rid.decode())

    def stream(self, method: str, payload: Any = None, *, request_id: str | None = None,
               timeout: float | None = None) -> Iterator[Any]:
        """The pieces of the service's `<method>_stream` as the replica sends them. `timeout`
        bounds the wait for each piece. Closing the iterator early (a `break`, garbage
        collection) cancels the stream on the replica. After the last piece, `last_stream`
        holds the final reply (its timing)."""
        rid = self._request_id(request_id)
        frame = pack_request(rid, method, payload, codec=self.codec, timing=self.timing,
                             stream=True)
        tried: list[str] = []
        while True:
            replica = self._pick(tried) or self._await_replica(tried, None)
            conn = self._stream_conn(replica)
            if conn is None:
                continue
            self._outstanding[replica] += 1
            given = 0
            finished = False
            try:
                start = time.perf_counter()
                why = None if self._send(conn, frame) else conn.lost
                deadline = None if timeout is None else time.monotonic() + timeout
                while why is None:
                    try:
                        reply = conn.sock.recv()
                    except zmq.Again:
                        why = conn.check() or (None if replica in self.table else "removed")
                        if why is None and deadline is not None and time.monotonic() > deadline:
                            raise ServiceTimeout(
                                f"service {self.service!r}: no piece of stream {rid.decode()} "
                                f"from replica {replica} within {timeout}s", replica) from None
                        continue
                    if reply_id(reply) != rid:
                        continue  # a piece of an earlier stream this socket gave up on
                    status = reply[6:7]
                    result = unpack_reply(reply, time.perf_counter() - start)
                    if status == PIECE:
                        given += 1
                        yield result.payload
                        if timeout is not None:
                            deadline = time.monotonic() + timeout
                        continue
                    finished = True
                    if status == OK:
                        self.last_stream = result
                        return
                    self._result(result)  # raises the service's error
            finally:
                self._outstanding[replica] -= 1
                if finished or why is not None:
                    self._release(conn)
                else:  # abandoned by the caller, or timed out: stop it on the replica
                    with contextlib.suppress(zmq.ZMQError):
                        conn.sock.send(pack_request(rid, CANCEL, None, stream=True), zmq.NOBLOCK)
                    self._release(conn)
            tried.append(replica)
            self._report(replica, why)
            if given or len(tried) > self.retries:
                raise ReplicaLost(f"service {self.service!r}: stream {rid.decode()} lost with "
                                  f"replica {replica} ({why}) after {given} piece(s)", replica)
            log.warning("service %s: replica %s lost (%s); stream %s goes to another replica",
                        self.service, replica, why, rid.decode())

    def _stream_conn(self, replica: str) -> _Conn | None:
        """A connection of this thread's that no other stream or call is reading from."""
        idle: dict[str, list[_Conn]] = self._local.__dict__.setdefault("idle_streams", {})
        spare = idle.get(replica)
        while spare:
            conn = spare.pop()
            if conn.check() is None and replica in self.table:
                return conn
            conn.close()
        entry = self.table.get(replica)
        if entry is None:
            return None
        return self._connect(replica, entry["address"])

    def _release(self, conn: _Conn) -> None:
        if conn.lost is not None or self._closed:
            conn.close()
            return
        self._local.__dict__.setdefault("idle_streams", {}).setdefault(conn.replica,
                                                                        []).append(conn)

    def call_many(self, method: str, payloads: Iterable[Any], *, window: int = 64,
                  timeout: float | None = None) -> list[Reply]:
        """Pipelined: up to `window` requests in flight at once; replies in input order."""
        items = []
        for i, p in enumerate(payloads):
            rid = self._request_id(None)
            items.append(_InFlight(i, rid, pack_request(rid, method, p, codec=self.codec,
                                                        timing=self.timing)))
        results: list[Reply | None] = [None] * len(items)
        waiting = list(reversed(items))
        inflight: dict[bytes, _InFlight] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = zmq.Poller()
        registered: set[zmq.Socket] = set()
        perf = time.perf_counter
        try:
            while waiting or inflight:
                while waiting and len(inflight) < window:
                    item = waiting.pop()
                    replica = self._pick(item.tried) or self._await_replica(item.tried, deadline)
                    conn = self._conn(replica)
                    if conn is None:
                        waiting.append(item)
                        continue
                    if conn.sock not in registered:
                        poller.register(conn.sock, zmq.POLLIN)
                        registered.add(conn.sock)
                    item.replica, item.sent = replica, perf()
                    if not self._send(conn, item.frame):
                        waiting.append(item)
                        self._lose(replica, conn.lost or "cannot connect", inflight, waiting)
                        continue
                    inflight[item.request_id] = item
                    self._outstanding[replica] += 1
                for sock, _ in poller.poll(POLL_MS):
                    while sock.get(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator]
                        reply = sock.recv(zmq.NOBLOCK)
                        item = inflight.pop(reply_id(reply), None)  # type: ignore[arg-type]
                        if item is None:
                            continue
                        self._outstanding[item.replica] -= 1
                        result = unpack_reply(reply, perf() - item.sent)
                        if self._metrics is not None and self._metrics.on:
                            self._stats().observe(result.round_trip_s, result._ns)
                        results[item.index] = self._result(result)
                for replica in {i.replica for i in inflight.values()}:
                    conn = self._conn_if_open(replica)
                    why = conn.check() if conn else "closed"
                    if why is None and replica not in self.table:
                        why = "removed"
                    if why:
                        if conn is not None and conn.sock in registered:
                            poller.unregister(conn.sock)
                            registered.discard(conn.sock)
                        self._lose(replica, why, inflight, waiting)
                if deadline is not None and time.monotonic() > deadline and inflight:
                    item = next(iter(inflight.values()))
                    raise ServiceTimeout(f"service {self.service!r}: {len(inflight)} request(s)"
                                         f" unanswered after {timeout}s", item.replica)
        finally:
            for item in inflight.values():
                self._outstanding[item.replica] -= 1
        return results  # type: ignore[return-value]

    def _conn_if_open(self, replica: str) -> _Conn | None:
        return self._local.__dict__.get("conns", {}).get(replica)

    def _lose(self, replica: str, why: str, inflight: dict[bytes, _InFlight],
              waiting: list[_InFlight]) -> None:
        self._report(replica, why)
        for rid, item in list(inflight.items()):
            if item.replica != replica:
                continue
            del inflight[rid]
            self._outstanding[replica] -= 1
            item.tried.append(replica)
            if len(item.tried) > self.retries:
                raise ReplicaLost(f"service {self.service!r}: request {rid.decode()} lost with "
                                  f"replica {replica} ({why}) after {len(item.tried)} "
                                  "attempt(s)", replica)
            waiting.append(item)
        log.warning("service %s: replica %s lost (%s); its requests go to other replicas",
                    self.service, replica, why)

    def ping(self, replica: str, timeout: float = 10.0) -> dict[str, Any]:
        """The replica's identity and counters, straight from it (no user code runs)."""
        rid = self._request_id(None)
        conn = self._conn(replica)
        if conn is None:
            raise ReplicaLost(f"replica {replica} of {self.service!r} is not published", replica)
        start = time.perf_counter()
        if not self._send(conn, pack_request(rid, PING, None)):
            raise ReplicaLost(f"replica {replica} of {self.service!r}: {conn.lost}", replica)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = conn.sock.recv()
            except zmq.Again:
                continue
            if reply_id(reply) == rid:
                return self._result(unpack_reply(reply, time.perf_counter() - start)).payload
        raise ServiceTimeout(f"replica {replica} of {self.service!r} did not answer a ping "
                             f"within {timeout}s", replica)

    def _result(self, reply: Reply) -> Reply:
        return raise_for(self.service, reply)

    def _stats(self) -> ClientStats:
        """This thread's ClientStats for the service (only called with metrics on)."""
        try:
            return self._local.stats
        except AttributeError:
            assert self._metrics is not None
            stats: ClientStats = self._metrics.stats_for(self.service)
            self._local.stats = stats
            return stats

    def close(self) -> None:
        self._closed = True
        for conn in self._local.__dict__.get("conns", {}).values():
            conn.close()
        for spare in self._local.__dict__.get("idle_streams", {}).values():
            for conn in spare:
                conn.close()
        self._ctx.destroy(linger=0)


def open_replicas(table: dict[str, dict[str, Any]]) -> list[str]:
    """The replicas new requests may go to: not those draining (a scale-down or the run's
    end), which stay in the table only so that their answers are still waited for."""
    return [r for r, entry in table.items() if not entry.get("draining")]


_FIELD = re.compile(r"field '([^']+)'")


def raise_for(service: str, reply: Reply) -> Reply:
    """The reply if it is a result or a piece; else the service's refusal (the caller's fault,
    naming the field when the message does) or its failure, as an exception."""
    if reply.status == OK or reply.status == PIECE:
        return reply
    if reply.status == REFUSED:
        named = _FIELD.search(reply.payload)
        raise ServiceRequestError(f"service {service!r} refused request {reply.id}: "
                                  f"{reply.payload}", field=named.group(1) if named else None)
    raise ServiceCallError(f"service {service!r}, replica {reply.replica}, request {reply.id}: "
                           f"{reply.payload}", reply.replica)

