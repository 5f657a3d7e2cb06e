"""How a ServiceHandle's requests travel: one interface, three ways.

`DirectTransport` sends to the replicas' own sockets (DirectClient), `ServeTransport` through a
Ray Serve DeploymentHandle, `FederationTransport` over the local replicas (one of the other
two) and the service's remote endpoints together (hpcray/remote). The handle picks one when it
is made (`transport_for`), so none of its methods asks which path it is on. Every transport
answers with the same timed `Response` and raises the same errors."""

from __future__ import annotations

import abc
import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from hpcray.errors import ReplicaLost, ServiceRequestError
from hpcray.spec.services import DEFAULT_MAX_ONGOING

ACALL_THREADS = 32  # an async call on a blocking transport runs on one of these threads


@dataclass
class Response:
    """A result and where its round trip went (the paper's RT components)."""

    id: str
    replica: str
    node: str | None
    result: Any
    inference_s: float
    service_s: float
    round_trip_s: float

    @property
    def communication_s(self) -> float:
        return max(0.0, self.round_trip_s - self.service_s - self.inference_s)


class Transport(Protocol):
    """What a handle needs of a path to the service."""

    def call(self, method: str, payload: Any, request_id: str | None,
             timeout: float | None) -> Response: ...

    def call_many(self, method: str, payloads: list[Any], window: int,
                  timeout: float | None) -> list[Response]: ...

    async def acall(self, method: str, payload: Any, request_id: str | None) -> Response: ...

    def stream(self, method: str, payload: Any, request_id: str | None) -> Iterator[Any]: ...

    def close(self) -> None: ...


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class _Blocking(abc.ABC):
    """For transports whose calls block: an async call waits on a thread of a pool that is
    made on first use and shared with `call_many`'s threads."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._pool: ThreadPoolExecutor | None = None

    @abc.abstractmethod
    def call(self, method: str, payload: Any, request_id: str | None,
             timeout: float | None) -> Response:
        """One request on this transport's path."""

    def _threads(self, size: int) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(size, thread_name_prefix=f"hpcray-{self.service}")
        return self._pool

    async def acall(self, method: str, payload: Any, request_id: str | None) -> Response:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads(ACALL_THREADS), lambda: self.call(method, payload, request_id, None))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class DirectTransport(_Blocking):
    """The replicas' own sockets; the DirectClient balances and fails over among them."""

    def __init__(self, service: str, client: Any) -> None:
        super().__init__(service)
        self.client = client

    def _response(self, reply: Any) -> Response:
        entry = self.client.table.get(reply.replica, {})
        t = reply.timing
        return Response(id=reply.id, replica=reply.replica, node=entry.get("node"),
                        result=reply.payload, inference_s=t.inference_s, service_s=t.service_s,
                        round_trip_s=t.round_trip_s)

    def call(self, method: str, payload: Any, request_id: str | None,
             timeout: float | None) -> Response:
        return self._response(self.client.call(method, payload, request_id=request_id,
                                               timeout=timeout))

    def call_many(self, method: str, payloads: list[Any], window: int,
                  timeout: float | None) -> list[Response]:
        return [self._response(r) for r in
                self.client.call_many(method, payloads, window=window, timeout=timeout)]

    def stream(self, method: str, payload: Any, request_id: str | None) -> Iterator[Any]:
        yield from self.client.stream(method, payload, request_id=request_id)

    def close(self) -> None:
        self.client.close()
        super().close()


class ServeTransport:
    """A Ray Serve DeploymentHandle: Serve's router picks the replica."""

    def __init__(self, service: str, handle: Any) -> None:
        self.service = service
        self.handle = handle

    def _request(self, method: str, payload: Any, request_id: str | None) -> dict[str, Any]:
        return {"id": request_id or new_request_id(), "method": method, "payload": payload}

    def call(self, method: str, payload: Any, request_id: str | None,
             timeout: float | None) -> Response:
        request = self._request(method, payload, request_id)
        start = time.perf_counter()
        try:
            out = self.handle.handle.remote(request).result(timeout_s=timeout)
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise unwrap(exc, self.service, request["id"]) from None
        return Response(round_trip_s=time.perf_counter() - start, **out)

    def call_many(self, method: str, payloads: list[Any], window: int,
                  timeout: float | None) -> list[Response]:
        responses = []
        for start in range(0, len(payloads), window):
            t0 = time.perf_counter()
            refs = [self.handle.handle.remote(self._request(method, p, None))
                    for p in payloads[start:start + window]]
            for payload_index, ref in enumerate(refs, start):
                try:
                    out = ref.result(timeout_s=timeout)
                except Exception as exc:  # noqa: BLE001
                    raise unwrap(exc, self.service, f"#{payload_index} of call_many") from None
                responses.append(Response(round_trip_s=time.perf_counter() - t0, **out))
        return responses

    async def acall(self, method: str, payload: Any, request_id: str | None) -> Response:
        request = self._request(method, payload, request_id)
        start = time.perf_counter()
        try:
            out = await self.handle.handle.remote(request)
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise unwrap(exc, self.service, request["id"]) from None
        return Response(round_trip_s=time.perf_counter() - start, **out)

    def stream(self, method: str, payload: Any, request_id: str | None) -> Iterator[Any]:
        request = self._request(method, payload, request_id)
        try:
            for chunk in self.handle.options(stream=True).handle_stream.remote(request):
                yield chunk["delta"]
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise unwrap(exc, self.service, request["id"]) from None

    def close(self) -> None:
        """Serve's handle holds nothing of ours to release."""


class FederationTransport(_Blocking):
    """The local replicas (over `local`, as one instance) and each remote endpoint, balanced
    together by a Federation; a response names the instance that answered. A request id goes
    with the request to the instance (a remote endpoint's `X-Request-Id` header)."""

    def __init__(self, service: str, federation: Any, local: Transport) -> None:
        super().__init__(service)
        self.federation = federation
        self.local = local

    def call(self, method: str, payload: Any, request_id: str | None,
             timeout: float | None) -> Response:
        start = time.perf_counter()
        got = self.federation.call(method, payload, timeout, request_id=request_id)
        return Response(id=request_id or new_request_id(), replica=got.instance, node=None,
                        result=got.result, inference_s=got.inference_s,
                        service_s=got.service_s,
                        round_trip_s=max(got.round_trip_s, time.perf_counter() - start))

    def call_many(self, method: str, payloads: list[Any], window: int,
                  timeout: float | None) -> list[Response]:
        return list(self._threads(window).map(lambda p: self.call(method, p, None, timeout),
                                              payloads))

    def stream(self, method: str, payload: Any, request_id: str | None) -> Iterator[Any]:
        return self.federation.stream(method, payload, request_id=request_id)

    def close(self) -> None:
        self.federation.close()
        self.local.close()
        super().close()


def federation_over(service: str, spec: dict[str, Any], local: Transport) -> Any:
    """A Federation of the local replicas (one instance, over `local`) and each of the
    service's remote endpoints."""
    from hpcray.remote import RemoteResult, endpoint_for
    from hpcray.remote.federation import Federation, Instance
    from hpcray.spec.services import RemoteEndpointSpec

    instances = []
    if spec["replicas"]:
        def call_local(method: str, payload: Any, timeout: float | None,
                       request_id: str | None = None) -> RemoteResult:
            r = local.call(method, payload, request_id, timeout)
            return RemoteResult(r.result, r.inference_s, r.service_s, r.round_trip_s, True,
                                r.replica)

        def stream_local(method: str, payload: Any,
                         request_id: str | None = None) -> Iterator[Any]:
            return local.stream(method, payload, request_id)

        per_replica = spec["max_ongoing_requests"] or DEFAULT_MAX_ONGOING
        instances.append(Instance("local", "local", spec["replicas"] * per_replica, 1.0,
                                  call_local, stream=stream_local))
    for remote in spec["remote"]:
        endpoint = endpoint_for(RemoteEndpointSpec.model_validate(remote))
        instances.append(Instance(endpoint.name, endpoint.kind, endpoint.max_concurrency,
                                  remote["weight"], endpoint.call, endpoint.stream,
                                  endpoint.probe, methods=endpoint.methods))
    return Federation(service, instances)


def transport_for(service: str, spec: dict[str, Any] | None, serve_handle: Any,
                  direct_client: Any = None,
                  federate: Callable[[str, dict[str, Any], Transport], Any] = federation_over
                  ) -> Transport:
    """The one transport a handle uses: the federation when the service has remote
    endpoints, else its local path: the direct client when there is one, else Serve."""
    local: Transport = DirectTransport(service, direct_client) if direct_client is not None \
        else ServeTransport(service, serve_handle)
    if spec and spec.get("remote"):
        return FederationTransport(service, federate(service, spec, local), local)
    return local


def unwrap(exc: Exception, service: str | None = None, request_id: str | None = None
           ) -> Exception:
    """A request the service refused surfaces as its ServiceRequestError, not Ray's wrapper;
    one whose replica died (Serve path) as ReplicaLost naming the service and the request,
    as on the direct path. Serve does not resend it: the method may not be idempotent."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    cause = getattr(exc, "cause", None)
    if isinstance(cause, ServiceRequestError):
        return cause
    if isinstance(exc, (RayActorError, ActorUnavailableError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ReplicaLost(f"service {service!r}: the replica serving request {request_id} "
                           f"was lost ({type(exc).__name__}: {first[:300]})")
    return exc
