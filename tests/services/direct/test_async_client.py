"""The direct path from an event loop (what the OpenAI API uses): one socket per replica
shared by every request in flight, replies handed out by id, streams cancelled on close."""

from __future__ import annotations

import asyncio
import signal

import pytest

from hpcray.errors import ServiceRequestError
from hpcray.services.direct.aclient import AsyncDirectClient
from hpcray.services.direct.client import ReplicaLost, ServiceCallError
from tests.conftest import wait_until
from tests.services.direct.conftest import Model

pytestmark = pytest.mark.timeout(120)


def run(addresses: dict[str, str], work, **options):
    async def main():
        client = AsyncDirectClient("model", addresses=addresses, token=b"", **options)
        try:
            return await work(client)
        finally:
            client.close()

    return asyncio.run(main())


def test_calls_and_streams_share_one_socket_per_replica(serve_model):
    addresses = {name: serve_model(name)[1] for name in ("r1", "r2")}

    async def work(client):
        calls = await asyncio.gather(*(client.call("echo", i) for i in range(200)))
        streams = await asyncio.gather(*(_collect(client.stream("count", 3 + k % 3))
                                         for k in range(32)))
        return calls, streams, len(client._conns)

    calls, streams, sockets = run(addresses, work)
    assert [r.payload for r in calls] == list(range(200))
    assert {r.replica for r in calls} == {"r1", "r2"}  # both replicas took requests
    assert streams == [[{"i": i} for i in range(3 + k % 3)] for k in range(32)]
    assert sockets == 2


async def _collect(pieces):
    return [p async for p in pieces]


def test_refusals_name_the_field_and_failures_the_replica(serve_model):
    _, address = serve_model("r1")

    async def work(client):
        out = {}
        for name, make in (("refused", lambda: _collect(client.stream("refuse"))),
                           ("failed", lambda: client.call("fail", 7)),
                           ("midway", lambda: _collect(client.stream("boom", 3)))):
            try:
                await make()
            except Exception as exc:  # noqa: BLE001 - inspected below
                out[name] = exc
        return out

    out = run({"r1": address}, work)
    assert isinstance(out["refused"], ServiceRequestError) and out["refused"].field == "top_k"
    assert isinstance(out["failed"], ServiceCallError) and out["failed"].replica == "r1"
    assert "RuntimeError: stream failed on 3" in str(out["midway"])


def test_closing_a_stream_early_stops_it_on_the_replica(serve_model):
    _, address = serve_model("r1")
    before = Model.ended

    async def work(client):
        pieces = client.stream("count", -1)
        got = [await pieces.__anext__() for _ in range(3)]
        await pieces.aclose()
        return got

    assert run({"r1": address}, work) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert wait_until(lambda: Model.ended == before + 1, 30)


@pytest.mark.faults
def test_a_killed_replica_has_its_calls_sent_to_the_other(model_process):
    (victim, a1), (_, a2) = model_process("r1"), model_process("r2")

    async def work(client):
        first = await asyncio.gather(*(client.call("sleep", 0.002) for _ in range(20)))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        after = await asyncio.gather(*(client.call("sleep", 0.002) for _ in range(40)))
        return first, after, sorted(client.table)

    first, after, left = run({"r1": a1, "r2": a2}, work)
    assert {r.replica for r in first} == {"r1", "r2"}
    assert len(after) == 40 and {r.replica for r in after} == {"r2"}
    assert left == ["r2"]


def test_without_a_replica_the_error_says_so(model_process):
    victim, address = model_process("only")

    async def work(client):
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        with pytest.raises(ReplicaLost, match="no replica to send the request to"):
            await client.call("sleep", 0.01)

    run({"only": address}, work, replica_wait_s=0.5)
