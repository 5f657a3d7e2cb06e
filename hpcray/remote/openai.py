"""OpenAI-compatible servers: vLLM's server, hosted APIs, another hpcray run's HTTP API.
`url` is the API's base, as OpenAI clients take it (for example http://host:8000/v1).

These APIs report no server timing, so the whole round trip comes back as measured; the
federation splits it with the endpoint's probe round trip (docs/remote.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from hpcray.remote.base import (
    RemoteEndpoint,
    RemoteModelError,
    RemoteProtocolError,
    RemoteResult,
    RemoteUnavailable,
)

_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")


class OpenAIEndpoint(RemoteEndpoint):
    kind = "openai"

    def _body(self, method: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not isinstance(payload, dict):
            from hpcray.services.replica import ServiceRequestError

            raise ServiceRequestError(f"{self.where}: payload must be a mapping")
        params = {k: payload[k] for k in _PARAMS if k in payload}
        if method == "generate":
            return "/completions", {"model": self.model, "prompt": payload.get("prompt", ""),
                                    **params}
        if method == "chat":
            return "/chat/completions", {"model": self.model,
                                         "messages": payload.get("messages", []), **params}
        if method == "embed":
            return "/embeddings", {"model": self.model, "input": payload.get("texts", [])}
        raise self.unsupported(method)

    def call(self, method: str, payload: Any, timeout: float | None = None) -> RemoteResult:
        path, body = self._body(method, payload)
        data, elapsed = self.post(path, body, timeout)
        if method == "embed":
            vectors = [self.field(item, "embedding") for item in self.field(data, "data")]
            result = {"embeddings": vectors, "dim": len(vectors[0]) if vectors else 0}
        else:
            choice = self.field(data, "choices", 0)
            text = self.field(choice, "message", "content") if method == "chat" \
                else self.field(choice, "text")
            usage = data.get("usage") or {}
            result = {"text": text, "prompt_tokens": usage.get("prompt_tokens"),
                      "completion_tokens": usage.get("completion_tokens"),
                      "finish_reason": choice.get("finish_reason")}
        return RemoteResult(result, 0.0, 0.0, elapsed, server_reported=False)

    def stream(self, method: str, payload: Any) -> Iterator[str]:
        path, body = self._body(method, payload)
        try:
            with self.client.stream("POST", path, json={**body, "stream": True}) as reply:
                self.check(reply)
                done = False
                for line in reply.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        choice = json.loads(data)["choices"][0]
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise RemoteProtocolError(f"{self.where}: malformed stream event "
                                                  f"{data[:120]!r}") from None
                    piece = (choice.get("delta") or {}).get("content") if method == "chat" \
                        else choice.get("text")
                    if piece:
                        yield piece
        except httpx.TransportError as exc:
            raise RemoteProtocolError(f"{self.where}: the stream stopped: "
                                      f"{type(exc).__name__}: {exc}") from None
        if not done:
            raise RemoteProtocolError(f"{self.where}: the stream stopped before [DONE]")

    def probe(self, timeout: float | None = None) -> float:
        start = time.perf_counter()
        try:
            reply = self.client.get("/models", timeout=timeout or min(self.timeout, 10.0))
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - start
        self.check(reply)
        try:
            served = [m.get("id") for m in reply.json().get("data", [])]
        except (ValueError, AttributeError):
            raise RemoteProtocolError(f"{self.where}: /models is not the model list") from None
        if self.model not in served:
            raise RemoteModelError(f"{self.where}: does not serve model {self.model!r}; it "
                                   f"serves {', '.join(map(str, served)) or 'none'}")
        return elapsed
