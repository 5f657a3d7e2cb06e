"""The handle's one transport (hpcray/services/transports.py): which one a service gets, and
that each answers with the same Response and errors. No Ray cluster: the DirectClient, the
Serve handle and the remote endpoints are stand-ins with the same surface."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ray.exceptions import ActorUnavailableError

from hpcray.errors import ReplicaLost, ServiceRequestError
from hpcray.services.handle import ServiceHandle
from hpcray.services.transports import (
    DirectTransport,
    FederationTransport,
    Response,
    ServeTransport,
    federation_over,
    transport_for,
)
from hpcray.spec.services import DEFAULT_MAX_ONGOING

pytestmark = pytest.mark.timeout(60)


class FakeDirect:
    """DirectClient's surface: replies with a timing, a replica table with nodes."""

    def __init__(self) -> None:
        self.table = {"r1": {"node": "n1"}}
        self.closed = False
        self.seen: list[tuple] = []

    def _reply(self, payload, request_id=None):
        timing = SimpleNamespace(inference_s=0.5, service_s=0.25, round_trip_s=1.0)
        return SimpleNamespace(id=request_id or "rid", replica="r1", payload=payload,
                               timing=timing)

    def call(self, method, payload, *, request_id=None, timeout=None):
        self.seen.append((method, payload, request_id, timeout))
        return self._reply(payload, request_id)

    def call_many(self, method, payloads, *, window, timeout):
        self.seen.append((method, payloads, window, timeout))
        return [self._reply(p) for p in payloads]

    def stream(self, method, payload, *, request_id=None):
        yield from ({"index": 0, "text": t, "finish_reason": None} for t in ("a", "b"))

    def close(self) -> None:
        self.closed = True


class FakeRef:
    def __init__(self, out=None, error=None) -> None:
        self.out, self.error = out, error

    def result(self, timeout_s=None):
        if self.error is not None:
            raise self.error
        return self.out


class FakeServe:
    """A DeploymentHandle's surface: `handle.handle.remote(request).result(...)`."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.requests: list[dict] = []
        self.handle = SimpleNamespace(remote=self._remote)

    def _remote(self, request):
        self.requests.append(request)
        return FakeRef({"id": request["id"], "replica": "serve-1", "node": "n2",
                        "result": request["payload"], "inference_s": 0.1, "service_s": 0.2},
                       self.error)


def test_a_service_without_remote_endpoints_goes_direct_when_it_has_a_client_else_serve():
    direct, serve = FakeDirect(), FakeServe()
    chosen = transport_for("svc", {"replicas": 2, "remote": []}, serve, direct)
    assert isinstance(chosen, DirectTransport) and chosen.client is direct
    chosen = transport_for("svc", {"replicas": 2, "remote": []}, serve, None)
    assert isinstance(chosen, ServeTransport) and chosen.handle is serve
    assert isinstance(transport_for("svc", None, serve), ServeTransport)  # no directory


@pytest.mark.parametrize("with_direct", [True, False])
def test_a_service_with_remote_endpoints_is_federated_over_its_local_path(with_direct):
    made = []

    def federate(service, spec, local):
        made.append((service, spec, local))
        return SimpleNamespace(close=lambda: None)

    spec = {"replicas": 1, "remote": [{"url": "http://x/v1"}]}
    chosen = transport_for("svc", spec, FakeServe(), FakeDirect() if with_direct else None,
                           federate=federate)
    assert isinstance(chosen, FederationTransport)
    assert made == [("svc", spec, chosen.local)]
    assert isinstance(chosen.local, DirectTransport if with_direct else ServeTransport)


def test_the_federation_holds_the_local_replicas_as_one_instance_and_each_endpoint():
    remote = {"url": "http://127.0.0.1:9/v1", "kind": "openai", "model": "m", "name": "far",
              "max_concurrency": 3, "weight": 2.0, "timeout": 5}
    local = DirectTransport("svc", FakeDirect())
    both = federation_over("svc", {"replicas": 2, "max_ongoing_requests": None,
                                   "remote": [remote]}, local)
    only_remote = federation_over("svc", {"replicas": 0, "max_ongoing_requests": None,
                                          "remote": [remote]}, local)
    try:
        assert [(i.name, i.kind, i.cap, i.weight) for i in both.instances] == [
            ("local", "local", 2 * DEFAULT_MAX_ONGOING, 1.0), ("far", "openai", 3, 2.0)]
        assert [i.name for i in only_remote.instances] == ["far"]
    finally:
        both.close()
        only_remote.close()
        for federation in (both, only_remote):
            for inst in federation.instances[-1:]:
                inst.call.__self__.close()  # the endpoint's HTTP client


def test_a_federated_call_names_the_local_replica_that_answered():
    direct = FakeDirect()
    local = DirectTransport("svc", direct)
    federation = federation_over("svc", {"replicas": 1, "max_ongoing_requests": 4,
                                         "remote": []}, local)
    via = FederationTransport("svc", federation, local)
    try:
        got = via.call("generate", {"prompt": "x"}, "my-id", 5.0)
        assert (got.id, got.replica, got.node, got.result) == ("my-id", "r1", None,
                                                               {"prompt": "x"})
        assert (got.inference_s, got.service_s) == (0.5, 0.25) and got.round_trip_s >= 1.0
        [(method, payload, request_id, timeout)] = direct.seen
        # the handle's id reaches the local replica, as it reaches a remote endpoint
        assert (method, payload, request_id) == ("generate", {"prompt": "x"}, "my-id")
        assert 0 < timeout <= 5.0  # what is left of the caller's
        assert "".join(p["text"] for p in via.stream("generate", {}, None)) == "ab"
        many = via.call_many("generate", [1, 2, 3], 2, None)
        assert [r.result for r in many] == [1, 2, 3] and len({r.id for r in many}) == 3
    finally:
        via.close()
    assert direct.closed


def test_the_direct_transport_answers_with_the_replicas_timing_and_node():
    direct = FakeDirect()
    via = DirectTransport("svc", direct)
    got = via.call("embed", {"texts": ["a"]}, "id-1", 2.0)
    assert got == Response(id="id-1", replica="r1", node="n1", result={"texts": ["a"]},
                           inference_s=0.5, service_s=0.25, round_trip_s=1.0)
    assert got.communication_s == 0.25
    assert [r.result for r in via.call_many("embed", [1, 2], 8, None)] == [1, 2]
    assert direct.seen[-1] == ("embed", [1, 2], 8, None)
    assert asyncio.run(via.acall("embed", 3, "id-2")).id == "id-2"
    via.close()
    assert direct.closed


def test_the_serve_transport_unwraps_the_services_refusal_and_a_lost_replica():
    serve = FakeServe()
    got = ServeTransport("svc", serve).call("chat", {"m": 1}, "id-3", None)
    assert (got.id, got.replica, got.node, got.result) == ("id-3", "serve-1", "n2", {"m": 1})
    assert got.round_trip_s >= 0 and serve.requests == [
        {"id": "id-3", "method": "chat", "payload": {"m": 1}}]

    refused = ServiceRequestError("service 'svc' refused: field 'x'")
    wrapped = RuntimeError("ray wrapper")
    wrapped.cause = refused  # type: ignore[attr-defined]
    with pytest.raises(ServiceRequestError) as caught:
        ServeTransport("svc", FakeServe(wrapped)).call("chat", None, "id-4", None)
    assert caught.value is refused

    lost = ActorUnavailableError("node died", b"0" * 16)
    with pytest.raises(ReplicaLost, match=r"service 'svc': the replica serving request "
                                          r"#0 of call_many was lost \(ActorUnavailableError"):
        ServeTransport("svc", FakeServe(lost)).call_many("chat", [1, 2], 8, None)


class Recording:
    """A transport that records what the handle asks of it."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def call(self, method, payload, request_id, timeout):
        self.asked.append(("call", method, payload, request_id, timeout))
        return Response(request_id or "x", "r", None, payload, 0.0, 0.0, 0.0)

    def call_many(self, method, payloads, window, timeout):
        self.asked.append(("call_many", method, payloads, window, timeout))
        return []

    async def acall(self, method, payload, request_id):
        self.asked.append(("acall", method, payload, request_id))
        return Response(request_id or "x", "r", None, payload, 0.0, 0.0, 0.0)

    def stream(self, method, payload, request_id):
        self.asked.append(("stream", method, payload, request_id))
        return iter([{"text": "he"}, {"text": ""}, "llo", {"usage": {}}])

    def close(self):
        self.asked.append(("close",))


def test_every_handle_method_goes_to_its_one_transport():
    handle = ServiceHandle.__new__(ServiceHandle)  # no cluster: the transport is set by hand
    handle.name, handle._direct, handle._via = "svc", None, Recording()
    handle.call("m", 1, request_id="a", timeout=3.0)
    handle.call_many("m", [1, 2], window=4, timeout=5.0)
    asyncio.run(handle.agenerate("p", max_tokens=2))
    assert "".join(handle.chat([{"role": "user", "content": "hi"}], stream=True)) == "hello"
    handle.embed(["t"])
    handle.close()
    assert handle._via.asked == [
        ("call", "m", 1, "a", 3.0),
        ("call_many", "m", [1, 2], 4, 5.0),
        ("acall", "generate", {"prompt": "p", "max_tokens": 2}, None),
        ("stream", "chat", {"messages": [{"role": "user", "content": "hi"}]}, None),
        ("call", "embed", {"texts": ["t"]}, None, None),
        ("close",)]
    assert handle.federation is None
