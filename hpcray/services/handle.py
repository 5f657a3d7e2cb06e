"""One handle API for every service: call, generate, chat, embed; sync and async.

Requests go over the service's transport: `direct` (the replica's own socket, the default)
or `serve` (a Ray Serve DeploymentHandle); streams too. A service with
`remote` endpoints is served by a Federation (hpcray/remote) over the local replicas and the
endpoints together; responses name the instance that answered. The handle picks its one
transport (hpcray/services/transports.py) when it is made; its methods only delegate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hpcray.llm import text_of
from hpcray.services.names import app_name
from hpcray.services.transports import (
    FederationTransport,
    Response,
    Transport,
    transport_for,
)

__all__ = ["Response", "ServiceHandle", "service"]


class ServiceHandle:
    """``hpcray.service("llm")``: requests carry an id; every response names its replica."""

    def __init__(self, name: str, *, transport: str | None = None, **direct_options: Any) -> None:
        import ray
        from ray import serve

        from hpcray.services.direct.directory import directory

        self.name = name
        self._direct = None
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
        self._via: Transport = transport_for(name, spec, self._handle, self._direct)

    @property
    def federation(self):
        """The Federation (instances, their load and health), or None without remote ones."""
        return self._via.federation if isinstance(self._via, FederationTransport) else None

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

    def call(self, method: str, payload: Any = None, *, request_id: str | None = None,
             timeout: float | None = None) -> Response:
        return self._via.call(method, payload, request_id, timeout)

    def call_many(self, method: str, payloads: list[Any], *, window: int = 64,
                  timeout: float | None = None) -> list[Response]:
        """Many requests, up to `window` in flight at once; responses in input order."""
        return self._via.call_many(method, payloads, window, timeout)

    async def acall(self, method: str, payload: Any = None, *,
                    request_id: str | None = None) -> Response:
        return await self._via.acall(method, payload, request_id)

    def close(self) -> None:
        self._via.close()

    def stream(self, method: str, payload: Any = None, *,
               request_id: str | None = None) -> Iterator[Any]:
        """Pieces of a streamed result as the replica produces them (an LLM service's are
        {"index", "text", "finish_reason"} records, then {"usage": ...}). Closing the iterator
        early cancels the request on the replica (an engine aborts it)."""
        return self._via.stream(method, payload, request_id)

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

    def request(self, method: str, path: str, *, json: Any = None, body: str | None = None,
                params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                request_id: str | None = None, timeout: float | None = None) -> Response:
        """One HTTP exchange with a program service that speaks `api: http`; the result is
        {"status", "json" | "text", "content_type"} (a 5xx from the program is an error)."""
        payload: dict[str, Any] = {"method": method, "path": path}
        if json is not None:
            payload["json"] = json
        if body is not None:
            payload["body"] = body
        if params:
            payload["params"] = params
        if headers:
            payload["headers"] = headers
        return self.call("request", payload, request_id=request_id, timeout=timeout)

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


def service(name: str, **options: Any) -> ServiceHandle:
    return ServiceHandle(name, **options)
