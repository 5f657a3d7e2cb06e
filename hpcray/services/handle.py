"""One handle API for every service: call, generate, chat, embed; sync and async."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    id: str
    replica: str
    node: str | None
    result: Any
    inference_s: float
    service_s: float
    round_trip_s: float


class ServiceHandle:
    """``hpcray.service("llm")``: requests carry an id; every response names its replica."""

    def __init__(self, name: str) -> None:
        from ray import serve

        from hpcray.services.manager import app_name

        self.name = name
        self._handle = serve.get_app_handle(app_name(name))

    def raw(self, method: str):
        """A Serve response for a replica-host method (used for BT publish)."""
        return getattr(self._handle, method).remote()

    def _request(self, method: str, payload: Any, request_id: str | None) -> dict[str, Any]:
        return {"id": request_id or uuid.uuid4().hex[:16], "method": method, "payload": payload}

    def call(self, method: str, payload: Any = None, *, request_id: str | None = None,
             timeout: float | None = None) -> Response:
        request = self._request(method, payload, request_id)
        start = time.perf_counter()
        try:
            out = self._handle.handle.remote(request).result(timeout_s=timeout)
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise _unwrap(exc) from None
        return Response(round_trip_s=time.perf_counter() - start, **out)

    async def acall(self, method: str, payload: Any = None, *,
                    request_id: str | None = None) -> Response:
        request = self._request(method, payload, request_id)
        start = time.perf_counter()
        try:
            out = await self._handle.handle.remote(request)
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise _unwrap(exc) from None
        return Response(round_trip_s=time.perf_counter() - start, **out)

    def stream(self, method: str, payload: Any = None, *,
               request_id: str | None = None) -> Iterator[str]:
        """Pieces of a streamed result (e.g. generated text) as the replica produces them."""
        request = self._request(method, payload, request_id)
        try:
            for chunk in self._handle.options(stream=True).handle_stream.remote(request):
                yield chunk["delta"]
        except Exception as exc:  # noqa: BLE001 - re-raised as the service's own error
            raise _unwrap(exc) from None

    def generate(self, prompt: str, *, stream: bool = False, **params: Any):
        if stream:
            return self.stream("generate", {"prompt": prompt, **params})
        return self.call("generate", {"prompt": prompt, **params})

    def chat(self, messages: list[dict[str, str]], *, stream: bool = False, **params: Any):
        if stream:
            return self.stream("chat", {"messages": messages, **params})
        return self.call("chat", {"messages": messages, **params})

    def embed(self, texts: list[str]) -> Response:
        return self.call("embed", {"texts": texts})

    async def agenerate(self, prompt: str, **params: Any) -> Response:
        return await self.acall("generate", {"prompt": prompt, **params})

    async def achat(self, messages: list[dict[str, str]], **params: Any) -> Response:
        return await self.acall("chat", {"messages": messages, **params})

    async def aembed(self, texts: list[str]) -> Response:
        return await self.acall("embed", {"texts": texts})


def _unwrap(exc: Exception) -> Exception:
    """A request the service refused surfaces as its ServiceRequestError, not Ray's wrapper."""
    from hpcray.services.replica import ServiceRequestError

    cause = getattr(exc, "cause", None)
    if isinstance(cause, ServiceRequestError):
        return ServiceRequestError(str(cause))
    return exc


def service(name: str) -> ServiceHandle:
    return ServiceHandle(name)
