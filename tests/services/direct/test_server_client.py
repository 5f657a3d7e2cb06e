"""The direct path end to end on loopback: results, errors, timing, failover, concurrency."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import zmq

from hpcray.services.direct.client import ReplicaLost, ServiceCallError
from hpcray.services.direct.protocol import pack_request, unpack_reply
from hpcray.services.ledger import ClientLedger, read_executed, reconcile
from hpcray.services.replica import ServiceRequestError

pytestmark = pytest.mark.timeout(120)


def test_round_trip_names_the_replica_and_splits_the_time(serve_model, client_for):
    _, address = serve_model("r1")
    client = client_for({"r1": address})
    reply = client.call("sleep", 0.02, request_id="first")
    assert (reply.id, reply.replica, reply.payload) == ("first", "r1", 0.02)
    t = reply.timing
    assert t.inference_s >= 0.02  # the handler slept that long, on the replica's clock
    assert t.before_s > 0 and t.after_s > 0
    assert t.round_trip_s >= t.inference_s + t.service_s
    assert t.communication_s == pytest.approx(t.round_trip_s - t.inference_s - t.service_s)
    client.timing = False
    untimed = client.call("echo", "x").timing
    assert (untimed.before_s, untimed.inference_s, untimed.after_s) == (0, 0, 0)


def test_errors_are_explicit(serve_model, client_for):
    _, address = serve_model("r1")
    client = client_for({"r1": address})
    with pytest.raises(ServiceCallError, match=r"replica r1, request .*RuntimeError: model "
                                               r"failed on 7") as info:
        client.call("fail", 7)
    assert info.value.replica == "r1"
    with pytest.raises(ServiceRequestError, match="no method 'missing'"):
        client.call("missing")
    with pytest.raises(ServiceRequestError, match="no method '_private'"):
        client.call("_private")
    assert client.call("echo", [1, "two", None]).payload == [1, "two", None]


def test_queue_time_counts_as_service_not_communication(serve_model, client_for):
    _, address = serve_model("r1")
    client = client_for({"r1": address})
    client.call("sleep", 0.02)  # the replica learns the handler is slow: a worker runs it
    replies = client.call_many("sleep", [0.02] * 5, window=5)
    waits = [r.timing.before_s for r in replies]
    # all five arrived at once; each waited for the ones before it, and that wait is
    # measured on the replica (service time), not left in communication
    assert waits[-1] >= 3 * 0.02
    assert all(r.timing.inference_s >= 0.02 for r in replies)
    # had the queue wait been left in communication, the last reply's would be at least
    # that wait; compared with it, not with a fixed time, so a loaded machine does not fail it
    assert all(r.timing.communication_s < waits[-1] for r in replies), \
        ([r.timing.communication_s for r in replies], waits)


def test_a_slow_handler_does_not_delay_pings(serve_model, client_for):
    """A ping is answered while a handler runs: the handler is held until after the ping,
    so this cannot pass or fail with the machine's speed."""
    from tests.services.direct.conftest import Model

    _, address = serve_model("r1")
    client = client_for({"r1": address})
    # once: held for 20 ms, far over the inline limit (0.1 ms), so the server learns that
    # `held` is slow and runs it on its worker thread from then on (a slower machine only
    # makes it look slower)
    Model.release.clear()
    threading.Timer(0.02, Model.release.set).start()
    assert client.call("held", None).payload == "released"
    Model.entered.clear()
    Model.release.clear()
    busy = threading.Thread(target=client.call_many, args=("held", [None]))
    busy.start()
    try:
        assert Model.entered.wait(30)
        assert client.ping("r1")["replica"] == "r1"  # the handler still holds the model
        assert busy.is_alive()
    finally:
        Model.release.set()
        busy.join(30)


def test_coroutine_handlers_run_concurrently(serve_model, client_for):
    _, address = serve_model("r1")
    client = client_for({"r1": address})
    replies = client.call_many("asleep", [0.2] * 10, window=10)
    assert [r.payload for r in replies] == [0.2] * 10
    # none waited for another: handler starts are not queued behind the 0.2 s handlers
    assert max(r.timing.before_s for r in replies) < 0.2


def test_a_req_socket_and_malformed_bytes(serve_model):
    _, address = serve_model("r1")
    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.connect(address)
        req.send(pack_request(b"q1", "echo", b'{"a":1}', codec="raw"))
        reply = unpack_reply(req.recv(), 0.0)
        assert (reply.id, reply.status, reply.payload) == ("q1", b"o", b'{"a":1}')
        req.send(b"GET / HTTP/1.0\r\n\r\n")
        bad = unpack_reply(req.recv(), 0.0)
        assert bad.status == b"r" and "bytes 0-4 must be 'HPR1Q'" in bad.payload
        req.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def test_plain_authentication_with_the_run_token(serve_model, client_for):
    _, address = serve_model("r1", token=b"secret-token")
    assert client_for({"r1": address}, token=b"secret-token").call("echo", 1).payload == 1
    wrong = client_for({"r1": address}, token=b"wrong", replica_wait_s=0.2, retries=0)
    with pytest.raises(ReplicaLost, match=r"replica r1 \(authentication failed"):
        wrong.call("echo", 1)


def test_power_of_two_choices_spreads_load(serve_model, client_for):
    addresses = {name: serve_model(name)[1] for name in ("r1", "r2", "r3")}
    client = client_for(addresses)
    replies = client.call_many("sleep", [0.001] * 300, window=12)
    counts = {r: sum(1 for x in replies if x.replica == r) for r in addresses}
    assert all(n >= 50 for n in counts.values()), counts


def _wait_lines(path: Path, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.faults
def test_a_replica_killed_under_load_loses_nothing(model_process, client_for, tmp_path):
    """4 threads x 100 calls over two replica processes; r1 is SIGKILLed once it has executed
    40 requests (read from its own ledger: a gate, not a timer). The direct client resends
    r1's in-flight requests to r2; the two ledgers show every id answered once, executed by
    its answerer, and the ids executed twice all on r1 and r2."""
    logs = tmp_path / "ledger" / "model"
    (victim, a1), (_, a2) = (model_process("r1", logs / "r1.executed"),
                             model_process("r2", logs / "r2.executed"))
    client = client_for({"r1": a1, "r2": a2})
    clients = [ClientLedger(f"t{k}") for k in range(4)]

    killed = threading.Event()

    def load(ledger: ClientLedger) -> None:
        for i in range(100):
            if i == 60:  # the rest is sent after the kill, whatever the machine's speed
                assert killed.wait(60)
            ledger.call(client.call, "sleep", 0.004, timeout=30)

    threads = [threading.Thread(target=load, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    assert _wait_lines(logs / "r1.executed", 40, 60)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    killed.set()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads)
    result = reconcile(clients, read_executed(tmp_path, "model"), lost_replicas=["r1"])
    print("ledger:", result.summary())  # the figures docs/reliability.md quotes (pytest -s)
    assert result.problems() == [], result.summary()
    assert (result.sent, result.answered, result.lost) == (400, 400, 0), result.summary()
    by = {o.replica for c in clients for o in c.outcomes.values()}
    assert by == {"r1", "r2"}
    # r2 answered what was sent after the kill
    assert all(c.outcomes[c.sent[-1]].replica == "r2" for c in clients)
    assert client.replicas == ["r2"]  # r1 was given up on


def test_without_another_replica_the_failure_names_the_lost_one(model_process, client_for):
    victim, address = model_process("only")
    client = client_for({"only": address}, replica_wait_s=0.2)
    threading.Timer(0.3, lambda: victim.send_signal(signal.SIGKILL)).start()
    with pytest.raises(ReplicaLost, match=r"only: connection closed"):
        client.call("sleep", 5.0)


def test_sixteen_clients_no_request_lost_or_duplicated(serve_model, client_for):
    addresses = {name: serve_model(name)[1] for name in ("r1", "r2")}
    shared = client_for(addresses)
    seen: dict[int, list[str]] = {}
    errors: list[str] = []

    def work(k: int) -> None:
        client = shared if k % 2 else client_for(addresses)
        ids = []
        try:
            if k % 4 == 0:  # pipelined
                replies = client.call_many("echo", [[k, i] for i in range(1024)], window=32)
                for i, r in enumerate(replies):
                    assert r.payload == [k, i]
                    ids.append(r.id)
            else:
                for i in range(1024):
                    r = client.call("echo", [k, i], request_id=f"c{k}-{i}")
                    assert r.payload == [k, i] and r.id == f"c{k}-{i}"
                    ids.append(r.id)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(f"client {k}: {exc!r}")
        seen[k] = ids

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(seen) == list(range(16))
    assert all(len(ids) == len(set(ids)) == 1024 for ids in seen.values())


def test_served_counts_answers_on_every_thread_and_no_ping(serve_model, client_for):
    """Answers come from the socket thread (fast handlers), the worker (slow ones) and the
    event loop (coroutines); `served` (what `hpcray status` and the metrics show) counts each
    once, and the health checks' pings not at all."""
    server, address = serve_model("r1")
    client = client_for({"r1": address})
    for i in range(30):
        client.call("echo", i)
    for _ in range(10):
        client.call("asleep", 0)
        client.call("sleep", 0.002)  # slow: the worker thread answers it after a few
    for _ in range(5):
        client.ping("r1")
    assert server.served == 50


# -- streams -----------------------------------------------------------------------------------
def test_a_stream_sends_its_pieces_then_its_timing(serve_model, client_for):
    _, address = serve_model("r1")
    client = client_for({"r1": address})
    assert list(client.stream("count", 5)) == [{"i": i} for i in range(5)]
    t = client.last_stream.timing
    assert t.inference_s >= 5 * 0.005 and t.round_trip_s >= t.inference_s
    assert list(client.stream("lines", 3)) == ["line 0", "line 1", "line 2"]  # a plain one
    client.codec = "json"
    assert list(client.stream("count", 2)) == [{"i": 0}, {"i": 1}]


def test_stream_errors_are_explicit(serve_model, client_for):
    _, address = serve_model("r1")
    client = client_for({"r1": address})
    pieces = client.stream("boom", 7)
    assert next(pieces) == "one"  # pieces before the failure arrive
    with pytest.raises(ServiceCallError, match="RuntimeError: stream failed on 7"):
        next(pieces)
    with pytest.raises(ServiceRequestError, match="field 'top_k': no"):
        list(client.stream("refuse"))
    with pytest.raises(ServiceRequestError, match="no method 'echo_stream'"):
        list(client.stream("echo", 1))
    assert client.call("echo", 3).payload == 3  # the connection is fine afterwards


def test_closing_a_stream_stops_its_generator_on_the_replica(serve_model, client_for):
    from tests.conftest import wait_until
    from tests.services.direct.conftest import Model

    _, address = serve_model("r1")
    client = client_for({"r1": address})
    before = Model.ended
    pieces = client.stream("count", -1)  # endless until stopped
    assert [next(pieces) for _ in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    pieces.close()  # sends .cancel
    assert wait_until(lambda: Model.ended == before + 1, 30)
    # the socket goes back to the pool and serves the next stream cleanly
    assert list(client.stream("count", 2)) == [{"i": 0}, {"i": 1}]


STREAM_IN_CHILD = """
import sys
from hpcray.services.direct.client import DirectClient
client = DirectClient("m", addresses={"r1": sys.argv[1]}, token=b"")
pieces = client.stream("count", -1)
next(pieces)
print("reading", flush=True)
for _ in pieces:
    pass
"""


@pytest.mark.faults
def test_a_killed_client_has_its_stream_stopped(serve_model):
    """No .cancel from a SIGKILLed process: the replica learns at the next piece that nobody
    is there to take it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import wait_until
    from tests.services.direct.conftest import Model

    _, address = serve_model("r1")
    before_start, before_end = Model.started, Model.ended
    root = Path(__file__).resolve().parents[3]
    child = subprocess.Popen([sys.executable, "-c", STREAM_IN_CHILD, address], cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)},
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "reading"
        assert Model.started == before_start + 1 and Model.ended == before_end
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert wait_until(lambda: Model.ended == before_end + 1, 30)


BURST = 20_000  # pieces of 4 KiB: far more than the sockets' queues and kernel buffers hold


def test_a_slow_reader_gets_every_piece_and_the_stream_waits_for_it(serve_model, client_for):
    """A client that stops reading fills its queue: the replica holds the replies and its
    generator waits (it cannot run ahead to the end); once the client reads again every
    piece arrives, in order."""
    from tests.conftest import wait_until
    from tests.services.direct.conftest import Model

    server, address = serve_model("r1")
    client = client_for({"r1": address})
    pieces = client.stream("burst", BURST)
    assert next(pieces)["i"] == 0
    # the client's queue filled, replies are held, and the generator waits for the client
    # (without that wait it would run on to the end and the replica would hold it all)
    assert wait_until(lambda: server._held and server.streams_waiting == 1, 30)
    assert Model.made < BURST
    rest = [piece["i"] for piece in pieces]
    assert rest == list(range(1, BURST))
    assert not server._held and Model.made == BURST and server.streams_waiting == 0
    assert list(client.stream("count", 2)) == [{"i": 0}, {"i": 1}]


def test_a_reader_that_stalls_past_the_limit_is_told_and_its_stream_stopped(serve_model,
                                                                           client_for):
    from tests.conftest import wait_until
    from tests.services.direct.conftest import Model

    server, address = serve_model("r1")
    server.stall_limit_s = 0.5
    client = client_for({"r1": address})
    before = Model.ended
    pieces = client.stream("burst", BURST)
    next(pieces)
    assert wait_until(lambda: any(h.stalled for h in list(server._held.values())), 30)
    assert wait_until(lambda: Model.ended == before + 1, 30)  # the generator was stopped
    got = 1
    with pytest.raises(ServiceCallError, match="read nothing for 0.5 s"):
        for _ in pieces:
            got += 1
    assert 1 < got < BURST  # what was queued before the stop, then the reason
    assert wait_until(lambda: not server._held, 30)
    assert list(client.stream("count", 2)) == [{"i": 0}, {"i": 1}]


def test_many_streams_at_once_each_get_their_own_pieces(serve_model, client_for):
    addresses = {name: serve_model(name)[1] for name in ("r1", "r2")}
    client = client_for(addresses)
    got: dict[int, list] = {}
    errors: list[str] = []

    def work(k: int) -> None:
        try:
            got[k] = [list(client.stream("count", 3 + k % 4)) for _ in range(5)]
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(f"stream {k}: {exc!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(got) == list(range(16))
    for k, runs in got.items():
        assert runs == [[{"i": i} for i in range(3 + k % 4)]] * 5
