"""What every remote adapter offers, and the errors it raises. Messages name the endpoint
by its name and URL (never its API key).

A call given a `request_id` sends it as the `X-Request-Id` header, the one OpenAI-compatible
servers and gateways log, so that a request can be found on the server's side (request
ledgers, hpcray/services/ledger.py); without one no such header is sent."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from hpcray.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteModelError,
    RemoteProtocolError,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
    ServiceRequestError,
)

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID = 255  # as on the direct path (hpcray/services/direct/protocol.py)


def request_id_headers(request_id: str | None) -> dict[str, str] | None:
    """The header carrying `request_id`, None without one. An id goes into an HTTP header
    as given, so it must be 1 to 255 visible ASCII characters (no space, no line break)."""
    if request_id is None:
        return None
    if not (0 < len(request_id) <= MAX_REQUEST_ID and request_id.isascii()
            and request_id.isprintable() and " " not in request_id):
        raise ServiceRequestError(f"a request id is 1 to {MAX_REQUEST_ID} visible ASCII "
                                  f"characters without spaces; got {request_id[:40]!r}")
    return {REQUEST_ID_HEADER: request_id}


@dataclass
class RemoteResult:
    result: Any
    inference_s: float       # model time the server reports (0 when it reports none)
    service_s: float         # server time outside the model (load, queue), when reported
    round_trip_s: float
    server_reported: bool    # False: the split of round_trip_s is estimated (see Federation)
    instance: str | None = None  # who answered: a local replica's id, else the instance's
    # name (set by the Federation; an endpoint called directly leaves it None)


class RemoteEndpoint(ABC):
    """One remote model server. Thread-safe: one pooled HTTP client per endpoint."""

    kind: str
    methods: tuple[str, ...] = ("generate", "chat", "embed")

    def __init__(self, name: str, url: str, model: str, api_key: str | None = None,
                 max_concurrency: int = 8, timeout: float = 60.0,
                 trust_env: bool = True) -> None:
        """`trust_env=False`: no HTTP proxy from the environment (a server on the
        allocation's own network, which a site's outbound proxy cannot reach)."""
        self.name, self.url, self.model = name, url.rstrip("/"), model
        self.max_concurrency, self.timeout = max_concurrency, timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limits = httpx.Limits(max_connections=max_concurrency,
                                    max_keepalive_connections=max_concurrency)
        self._trust_env = trust_env
        self.client = httpx.Client(base_url=self.url, headers=self._headers, verify=True,
                                   timeout=timeout, limits=self._limits, trust_env=trust_env)
        self._aclient: httpx.AsyncClient | None = None  # made on first use, on its loop

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.url!r}, model={self.model!r})"

    @property
    def where(self) -> str:
        return f"remote endpoint {self.name!r} ({self.url})"

    # -- what adapters implement ---------------------------------------------------------------
    probe_path: str  # a cheap GET that needs no model: the endpoint's model list
    end_of_stream: str  # what a complete stream ends with, for the error when it does not

    @abstractmethod
    def body(self, method: str, payload: Any) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the request for `method`."""

    def reply(self, method: str, data: dict[str, Any], elapsed: float) -> RemoteResult:
        """The result in a server's JSON reply to `method`, timed `elapsed` seconds: what an
        adapter using the shared `call`/`acall` implements (one with its own `call` need not)."""
        raise NotImplementedError(f"{type(self).__name__} has no reply parser")

    def call(self, method: str, payload: Any, timeout: float | None = None,
             request_id: str | None = None) -> RemoteResult:
        headers = request_id_headers(request_id)
        path, body = self.body(method, payload)
        data, elapsed = self.post(path, body, timeout, headers=headers)
        return self.reply(method, data, elapsed)

    async def acall(self, method: str, payload: Any, timeout: float | None = None,
                    request_id: str | None = None) -> RemoteResult:
        """`call` on the caller's event loop: a server that batches (vLLM) sees every request
        a replica has in flight, not one at a time. One loop per endpoint."""
        headers = request_id_headers(request_id)
        path, body = self.body(method, payload)
        start = time.perf_counter()
        try:
            reply = await self.aclient.post(path, json=body, timeout=timeout or self.timeout,
                                             headers=headers)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        elapsed = time.perf_counter() - start
        self.check(reply)
        return self.reply(method, self.json_object(reply, path), elapsed)

    @property
    def aclient(self) -> httpx.AsyncClient:
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(base_url=self.url, headers=self._headers,
                                              verify=True, timeout=self.timeout,
                                              limits=self._limits, trust_env=self._trust_env)
        return self._aclient

    @abstractmethod
    def stream_event(self, method: str, line: str) -> tuple[str | None, bool] | None:
        """One line of a streamed reply -> (piece, last), or None for a line to skip."""

    @abstractmethod
    def served_models(self, data: Any) -> list[str]:
        """The model names in the probe's reply."""

    def serves(self, served: list[str]) -> bool:
        return self.model in served

    # -- shared: streaming and the health probe -------------------------------------------------
    def stream(self, method: str, payload: Any, request_id: str | None = None
               ) -> Iterator[str]:
        headers = request_id_headers(request_id)
        path, body = self.body(method, payload)
        done = False
        try:
            with self.client.stream("POST", path, json={**body, "stream": True},
                                    headers=headers) as reply:
                self.check(reply)
                for line in reply.iter_lines():
                    event = self.stream_event(method, line)
                    if event is None:
                        continue
                    piece, done = event
                    if piece:
                        yield piece
                    if done:
                        break
        except httpx.TransportError as exc:
            raise RemoteProtocolError(f"{self.where}: the stream stopped: "
                                      f"{type(exc).__name__}: {exc}") from None
        if not done:
            raise RemoteProtocolError(f"{self.where}: the stream stopped before "
                                      f"{self.end_of_stream}")

    async def astream(self, method: str, payload: Any, request_id: str | None = None
                      ) -> AsyncIterator[str]:
        """`stream` on the caller's event loop. Closing it early closes the connection, which
        makes the server stop generating."""
        headers = request_id_headers(request_id)
        path, body = self.body(method, payload)
        done = False
        try:
            async with self.aclient.stream("POST", path, json={**body, "stream": True},
                                           headers=headers) as reply:
                if reply.status_code >= 400:
                    await reply.aread()
                self.check(reply)
                async for line in reply.aiter_lines():
                    event = self.stream_event(method, line)
                    if event is None:
                        continue
                    piece, done = event
                    if piece:
                        yield piece
                    if done:
                        break
        except httpx.TransportError as exc:
            raise RemoteProtocolError(f"{self.where}: the stream stopped: "
                                      f"{type(exc).__name__}: {exc}") from None
        if not done:
            raise RemoteProtocolError(f"{self.where}: the stream stopped before "
                                      f"{self.end_of_stream}")

    def probe(self, timeout: float | None = None) -> float:
        """Seconds for the model list (the health probe). Raises a RemoteError;
        RemoteModelError when the endpoint does not list the model."""
        start = time.perf_counter()
        try:
            reply = self.client.get(self.probe_path, timeout=timeout or min(self.timeout, 10.0))
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - start
        self.check(reply)
        try:
            served = self.served_models(reply.json())
        except (ValueError, AttributeError, TypeError):
            raise RemoteProtocolError(f"{self.where}: {self.probe_path} is not the model "
                                      "list") from None
        if not self.serves(served):
            raise RemoteModelError(f"{self.where}: does not serve model {self.model!r}; it "
                                   f"serves {', '.join(map(str, served)) or 'none'}")
        return elapsed

    def malformed(self, what: str, text: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.where}: malformed {what} {text[:120]!r}")

    # -- shared HTTP handling -------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any], timeout: float | None = None,
             headers: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
        """`headers`: added to the client's own (its Authorization) for this request."""
        start = time.perf_counter()
        try:
            reply = self.client.post(path, json=body, timeout=timeout or self.timeout,
                                     headers=headers)
        except (httpx.TimeoutException, httpx.ConnectError, httpx.RemoteProtocolError,
                httpx.ReadError, httpx.WriteError) as exc:
            raise self.transport_error(exc) from None
        elapsed = time.perf_counter() - start
        self.check(reply)
        return self.json_object(reply, path), elapsed

    def transport_error(self, exc: httpx.HTTPError) -> RemoteError:
        """What a failed exchange means for the caller: unreachable (try another instance)
        or a reply that never came."""
        if isinstance(exc, httpx.TimeoutException):
            what = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for a reply"
            err = RemoteUnavailable if isinstance(exc, httpx.ConnectTimeout) else RemoteTimeout
            return err(f"{self.where}: timed out {what}")
        if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                            httpx.WriteError)):
            return RemoteUnavailable(f"{self.where}: {type(exc).__name__}: {exc}")
        return RemoteError(f"{self.where}: {type(exc).__name__}: {exc}")

    def json_object(self, reply: httpx.Response, path: str) -> dict[str, Any]:
        try:
            data = reply.json()
        except ValueError:
            raise RemoteProtocolError(f"{self.where}: {path} replied with something that is "
                                      f"not JSON: {reply.text[:120]!r}") from None
        if not isinstance(data, dict):
            raise RemoteProtocolError(f"{self.where}: {path} replied {type(data).__name__}, "
                                      "not a JSON object")
        return data

    def check(self, reply: httpx.Response) -> None:
        if reply.status_code < 400:
            return
        try:
            reply.read()  # a streamed reply's error body
            text = reply.text[:200]
        except httpx.HTTPError:
            text = ""
        if reply.status_code in (401, 403):
            raise RemoteAuthError(f"{self.where}: authentication failed (HTTP "
                                  f"{reply.status_code}); check the API key variable")
        if reply.status_code == 404 and "model" in text.lower():
            raise RemoteModelError(f"{self.where}: does not serve model {self.model!r} "
                                   f"(HTTP 404: {text})")
        if reply.status_code >= 500:
            err = RemoteServerError(f"{self.where}: HTTP {reply.status_code}: {text}")
            err.reached = reply.status_code != 503
            raise err
        raise ServiceRequestError(f"{self.where}: HTTP {reply.status_code}: {text}")

    def field(self, data: dict[str, Any], *path: Any) -> Any:
        """data[path...], or a RemoteProtocolError naming what is missing."""
        value: Any = data
        for key in path:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                raise RemoteProtocolError(
                    f"{self.where}: malformed reply, no {'.'.join(map(str, path))} in "
                    f"{str(data)[:160]}") from None
        return value

    def unsupported(self, method: str) -> Exception:
        return ServiceRequestError(f"{self.where} serves {', '.join(self.methods)}; not "
                                   f"{method!r}")

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
