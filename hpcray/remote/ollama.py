"""Ollama's native API (`/api/generate`, `/api/chat`, `/api/embed`). Its replies report
durations in nanoseconds: prompt evaluation and generation are the inference component; the
rest of the server's total (model load, queueing) is the service component. `url` is the
server's root, for example http://host:11434."""

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


class OllamaEndpoint(RemoteEndpoint):
    kind = "ollama"

    def _body(self, method: str, payload: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(payload, dict):
            from hpcray.services.replica import ServiceRequestError

            raise ServiceRequestError(f"{self.where}: payload must be a mapping")
        options = {}
        if "max_tokens" in payload:
            options["num_predict"] = payload["max_tokens"]
        for key in ("temperature", "top_p", "seed", "stop"):
            if key in payload:
                options[key] = payload[key]
        if method == "generate":
            return "/api/generate", {"model": self.model, "prompt": payload.get("prompt", ""),
                                     "stream": False, "options": options}
        if method == "chat":
            return "/api/chat", {"model": self.model, "messages": payload.get("messages", []),
                                 "stream": False, "options": options}
        if method == "embed":
            return "/api/embed", {"model": self.model, "input": payload.get("texts", [])}
        raise self.unsupported(method)

    def call(self, method: str, payload: Any, timeout: float | None = None) -> RemoteResult:
        path, body = self._body(method, payload)
        data, elapsed = self.post(path, body, timeout)
        if method == "embed":
            vectors = self.field(data, "embeddings")
            result = {"embeddings": vectors, "dim": len(vectors[0]) if vectors else 0}
        else:
            text = self.field(data, "message", "content") if method == "chat" \
                else self.field(data, "response")
            result = {"text": text, "prompt_tokens": data.get("prompt_eval_count"),
                      "completion_tokens": data.get("eval_count"),
                      "finish_reason": data.get("done_reason")}
        total = data.get("total_duration")
        if not isinstance(total, int):
            return RemoteResult(result, 0.0, 0.0, elapsed, server_reported=False)
        model = (data.get("prompt_eval_duration") or 0) + (data.get("eval_duration") or 0)
        return RemoteResult(result, model / 1e9, max(0, total - model) / 1e9, elapsed,
                            server_reported=True)

    def stream(self, method: str, payload: Any) -> Iterator[str]:
        path, body = self._body(method, payload)
        done = False
        try:
            with self.client.stream("POST", path, json={**body, "stream": True}) as reply:
                self.check(reply)
                for line in reply.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise RemoteProtocolError(f"{self.where}: malformed stream line "
                                                  f"{line[:120]!r}") from None
                    piece = (event.get("message") or {}).get("content") if method == "chat" \
                        else event.get("response")
                    if piece:
                        yield piece
                    if event.get("done"):
                        done = True
                        break
        except httpx.TransportError as exc:
            raise RemoteProtocolError(f"{self.where}: the stream stopped: "
                                      f"{type(exc).__name__}: {exc}") from None
        if not done:
            raise RemoteProtocolError(f"{self.where}: the stream stopped before done")

    def probe(self, timeout: float | None = None) -> float:
        start = time.perf_counter()
        try:
            reply = self.client.get("/api/tags", timeout=timeout or min(self.timeout, 10.0))
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - start
        self.check(reply)
        try:
            served = [m.get("name") or m.get("model") for m in reply.json().get("models", [])]
        except (ValueError, AttributeError):
            raise RemoteProtocolError(f"{self.where}: /api/tags is not the model list") \
                from None
        if self.model not in served and f"{self.model}:latest" not in served:
            raise RemoteModelError(f"{self.where}: does not serve model {self.model!r}; it "
                                   f"serves {', '.join(map(str, served)) or 'none'}")
        return elapsed
