"""A replica that drains (a scale-down, the run's end): clients send it nothing new but wait
for what it holds, and it stops only once that is answered; the requests are ordered by a
handler held on a gate, never by sleeps."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import wait_until
from tests.services.direct.conftest import Model

pytestmark = pytest.mark.timeout(120)


def _taught_held_is_slow(client_for, addresses: dict[str, str]) -> None:
    """One call of `held` per replica, released after 20 ms: each server then runs it on its
    worker thread, so its socket thread answers pings while one is held."""
    for replica, address in addresses.items():
        Model.release.clear()
        threading.Timer(0.02, Model.release.set).start()
        assert client_for({replica: address}).call("held", None).payload == "released"


def _draining(client, addresses: dict[str, str], replica: str) -> None:
    """What the directory's drain tells every watching client."""
    client._apply({"transport": "direct", "version": client.version + 1, "replicas": [
        {"replica": r, "address": a, "node": None, "draining": r == replica}
        for r, a in addresses.items()]})


def test_a_draining_replica_answers_what_it_holds_and_gets_nothing_new(serve_model, client_for):
    servers = dict(r1=serve_model("r1"), r2=serve_model("r2"))
    addresses = {r: a for r, (_, a) in servers.items()}
    _taught_held_is_slow(client_for, addresses)
    client = client_for(addresses)
    Model.entered.clear()
    Model.release.clear()
    held: dict = {}
    caller = threading.Thread(target=lambda: held.update(reply=client.call("held", None)))
    caller.start()
    assert Model.entered.wait(30)  # running on one replica, held there
    holder = next(r for r, (s, _) in servers.items() if s.in_flight == 1)
    other = "r2" if holder == "r1" else "r1"
    server = servers[holder][0]
    ping = client.ping(holder)
    assert ping["in_flight"] == 1  # what the autoscaler reads: the held request
    _draining(client, addresses, holder)
    assert client.replicas == [other]
    drained: dict = {}
    drainer = threading.Thread(target=lambda: drained.update(ok=server.drain(60)))
    drainer.start()
    # new requests go to the other replica only, while the holder still holds its one
    assert {client.call("echo", i).replica for i in range(20)} == {other}
    assert drainer.is_alive() and server.in_flight == 1 and "reply" not in held
    Model.release.set()
    caller.join(30)
    drainer.join(30)
    assert held["reply"].replica == holder and held["reply"].payload == "released"
    assert drained == {"ok": True}
    # answered once, by the replica that held it: nothing was sent a second time
    assert server.served == 2 and servers[other][0].served == 21  # 1 each to teach them


def test_a_drain_gives_up_at_its_timeout(serve_model, client_for):
    server, address = serve_model("r1")
    client = client_for({"r1": address})
    Model.entered.clear()
    Model.release.clear()
    caller = threading.Thread(target=lambda: client.call("held", None))
    caller.start()
    try:
        assert Model.entered.wait(30)
        assert server.drain(0.3) is False  # still held: the caller resends elsewhere
    finally:
        Model.release.set()
        caller.join(30)
    assert wait_until(lambda: server.in_flight == 0, 30)
    assert server.drain(5, quiet=0.05) is True  # idle: at once (after the quiet time)
