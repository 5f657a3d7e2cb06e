"""One handle API for every service: call, generate, chat, embed; sync and async.

Requests go over the service's transport: `direct` (the replica's own socket, the default)
or `serve` (a Ray Serve DeploymentHandle); streams too. A service with
`remote` endpoints is served by a Federation (hpcray/remote) over the local replicas and the
endpoints together; responses name the instance that answered."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hpcray.errors import ServiceRequestError
from hpcray.llm import text_of
from hpcray.services.names import app_name
from hpcray.spec.services import DEFAULT_MAX_ONGOING


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


class ServiceHandle:
    """``hpcray.service("llm")``: requests carry an id; every response names its replica."""

    def __init__(self, name: str, *, transport: str | None = None, **direct_options: Any) -> None:
        import ray
        from ray import serve

        from hpcray.services.direct.directory import directory

        self.name = name
        self._direct = None
        self._federation = None
        self._pool: ThreadPoolExecutor | None = None
        found = directory()
        spec = ray.get(found.declared.remote(name))["spec"] if found is not None else None
        replicas = spec["replicas"] if spec else 1
        self._handle = serve.get_app_handle(app_name(name)) if replicas else None
        if transport is None:
            transport = "serve" if found is None else \
                ray.get(found.describe.remote(name))["transport"]
        self.transport = transport
        if transport == "direct" and replicas:
            from hpcray.services.direct.client import DirectClient

            self._direct = DirectClient(name, directory=found, **direct_options)
        if spec and spec.get("remote"):
            self._federation = self._federate(spec)

    def _federate(self, spec: dict[str, Any]):
        """Local replicas (one instance) and each remote endpoint, balanced together."""
        from hpcray.remote import RemoteResult, endpoint_for
        from hpcray.remote.federation import Federation, Instance
        from hpcray.spec.services import RemoteEndpointSpec

        instances = []
        if spec["replicas"]:
            def local(method: str, payload: Any, timeout: float | None) -> RemoteResult:
                r = self._call_local(method, payload, None, timeout)
                got = RemoteResult(r.result, r.inference_s, r.service_s, r.round_trip_s, True)
                got.instance = r.replica
                return got

            per_replica = spec["max_ongoing_requests"] or DEFAULT_MAX_ONGOING
            instances.append(Instance(
                "local", "local", spec["replicas"] * per_replica, 1.0, local,
                stream=lambda method, payload: self._stream_local(method, payload)))
        for remote in spec["remote"]:
            endpoint = endpoint_for(RemoteEndpointSpec.model_validate(remote))
            instances.append(Instance(endpoint.name, endpoint.kind, endpoint.max_concurrency,
                                      remote["weight"], endpoint.call, endpoint.stream,
                                      endpoint.probe, methods=endpoint.methods))
        return Federation(self.name, instances)

    @property
    def federation(self):
        """The Federation (instances, their load and health), or None without remote ones."""
        return self._federation

    def __reduce__(self):
        """A handle sent to a Ray task reconnects there (sockets do not travel)."""
        return (ServiceHandle, (self.name,), None)

    @property
    def direct(self):
        """The DirectClient (replica table, call_many, ping), or None on the Serve path."""
        return self._direct

    def raw(self, method: str):
        """A Serve response for a replica-host method (used for BT publish)."""
        return getattr(self._handle, method).remote()

    def _request(self, method: str, payload: Any, request_id: str | None) -> dict[str, Any]:
        return {"id": request_id or uuid.uuid4().hex[:16], "method": method, "payload": payload}

    def _from_reply(self, reply) -> Response:
        entry = self._direct.table.get(reply.replica, {})
        t = reply.timing
        return Response(id=reply.id, replica=reply.replica, node=entry.get("node"),
                        result=reply.payload, inference_s=t.inference_s, service_s=t.service_s,
                        round_trip_s=t.round_trip_s)

    def call(self, method: str, payload: Any = None, *, request_id: str | None = None,
             timeout: float | None = None) -> Response:
        if self._federation is not None:
            start = time.perf_counter()
            got = self._federation.call(method, payload, timeout)
            return Response(id=request_id or uuid.uuid4().hex[:16], replica=got.instance,
                            node=None, result=got.result, inference_s=got.inference_s,
                            service_s=got.service_s,
                            round_trip_s=max(got.round_trip_s, time.perf_counter() - start))
        return self._call_local(method, payload, request_id, timeout)

    def _call_local(self, method: str, payload: Any, request_id: str | None,
                    timeout: float | None) -> Response:
        if self._direct is not None:
            return self._from_reply(self._direct.call(method, payload, request_id=request_id,
                                                      timeout=timeout))
        request = self._request(method, payload, request_id)
        start = time.perf_counter()
        try:
            out = self._handle.handle.remote(request).result(timeout_s=timeout)
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise _unwrap(exc, self.name, request["id"]) from None
        return Response(round_trip_s=time.perf_counter() - start, **out)

    def call_many(self, method: str, payloads: list[Any], *, window: int = 64,
                  timeout: float | None = None) -> list[Response]:
        """Many requests, up to `window` in flight at once; responses in input order."""
        if self._federation is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(window, thread_name_prefix=f"hpcray-{self.name}")
            return list(self._pool.map(lambda p: self.call(method, p, timeout=timeout),
                                       payloads))
        if self._direct is not None:
            return [self._from_reply(r) for r in
                    self._direct.call_many(method, payloads, window=window, timeout=timeout)]
        responses = []
        for start in range(0, len(payloads), window):
            t0 = time.perf_counter()
            refs = [self._handle.handle.remote(self._request(method, p, None))
                    for p in payloads[start:start + window]]
            for payload_index, ref in enumerate(refs, start):
                try:
                    out = ref.result(timeout_s=timeout)
                except Exception as exc:  # noqa: BLE001
                    raise _unwrap(exc, self.name, f"#{payload_index} of call_many") from None
                responses.append(Response(round_trip_s=time.perf_counter() - t0, **out))
        return responses

    async def acall(self, method: str, payload: Any = None, *,
                    request_id: str | None = None) -> Response:
        if self._direct is not None or self._federation is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(32, thread_name_prefix=f"hpcray-{self.name}")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, lambda: self.call(method, payload, request_id=request_id))
        request = self._request(method, payload, request_id)
        start = time.perf_counter()
        try:
            out = await self._handle.handle.remote(request)
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise _unwrap(exc, self.name, request["id"]) from None
        return Response(round_trip_s=time.perf_counter() - start, **out)

    def close(self) -> None:
        if self._federation is not None:
            self._federation.close()
        if self._direct is not None:
            self._direct.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def stream(self, method: str, payload: Any = None, *,
               request_id: str | None = None) -> Iterator[Any]:
        """Pieces of a streamed result as the replica produces them (an LLM service's are
        {"index", "text", "finish_reason"} records, then {"usage": ...}). Closing the iterator
        early cancels the request on the replica (an engine aborts it)."""
        if self._federation is not None:
            return self._federation.stream(method, payload)
        return self._stream_local(method, payload, request_id)

    def _stream_local(self, method: str, payload: Any = None,
                      request_id: str | None = None) -> Iterator[Any]:
        if self._direct is not None:
            yield from self._direct.stream(method, payload, request_id=request_id)
            return
        request = self._request(method, payload, request_id)
        try:
            for chunk in self._handle.options(stream=True).handle_stream.remote(request):
                yield chunk["delta"]
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise _unwrap(exc, self.name, request["id"]) from None

    def generate(self, prompt: str, *, stream: bool = False, **params: Any):
        """Text for `prompt`; `params` are the OpenAI sampling fields the service honours
        (max_tokens, temperature, top_p, stop, seed, n, response_format, ...) and `adapter`.
        With `stream=True`, the text's pieces as the engine makes them."""
        if stream:
            return _texts(self.stream("generate", {"prompt": prompt, **params}))
        return self.call("generate", {"prompt": prompt, **params})

    def chat(self, messages: list[dict[str, str]], *, stream: bool = False, **params: Any):
        if stream:
            return _texts(self.stream("chat", {"messages": messages, **params}))
        return self.call("chat", {"messages": messages, **params})

    def embed(self, texts: list[str]) -> Response:
        return self.call("embed", {"texts": texts})

    async def agenerate(self, prompt: str, **params: Any) -> Response:
        return await self.acall("generate", {"prompt": prompt, **params})

    async def achat(self, messages: list[dict[str, str]], **params: Any) -> Response:
        return await self.acall("chat", {"messages": messages, **params})

    async def aembed(self, texts: list[str]) -> Response:
        return await self.acall("embed", {"texts": texts})


def _texts(items: Iterator[Any]) -> Iterator[str]:
    """The text pieces of an LLM stream (records from local replicas, strings from remote
    endpoints); closing this closes the stream."""
    try:
        for item in items:
            text = text_of(item)
            if text:
                yield text
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _unwrap(exc: Exception, service: str | None = None, request_id: str | None = None
            ) -> Exception:
    """A request the service refused surfaces as its ServiceRequestError, not Ray's wrapper;
    one whose replica died (Serve path) as ReplicaLost naming the service and the request,
    as on the direct path. Serve does not resend it: the method may not be idempotent."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    from hpcray.services.direct.client import ReplicaLost
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ServiceRequestError):
        return cause
    if isinstance(exc, (RayActorError, ActorUnavailableError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ReplicaLost(f"service {service!r}: the replica serving request {request_id} "
                           f"was lost ({type(exc).__name__}: {first[:300]})")
    return exc


def service(name: str, **options: Any) -> ServiceHandle:
    return ServiceHandle(name, **options)
