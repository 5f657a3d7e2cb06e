"""Ollama's native API (`/api/generate`, `/api/chat`, `/api/embed`). Its replies report
durations in nanoseconds: prompt evaluation and generation are the inference component; the
rest of the server's total (model load, queueing) is the service component. `url` is the
server's root, for example http://host:11434."""

from __future__ import annotations

import json
from typing import Any

from hpcray import llm
from hpcray.errors import ServiceRequestError
from hpcray.remote.base import RemoteEndpoint, RemoteResult

# Ollama's options (and `format` for JSON output); n, logprobs and ignore_eos it has not
HONOURS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                     "presence_penalty", "frequency_penalty", "response_format"})


class OllamaEndpoint(RemoteEndpoint):
    kind = "ollama"
    probe_path = "/api/tags"
    end_of_stream = "done"

    def body(self, method: str, payload: Any) -> tuple[str, dict[str, Any]]:
        if not isinstance(payload, dict):
            raise ServiceRequestError(f"{self.where}: payload must be a mapping")
        options: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if method in ("generate", "chat"):
            req = llm.parse_request(payload, backend=self.where, honours=HONOURS,
                                    max_new_tokens=1, adapters=set())
            if req.json_schema is not None or req.json_object:
                extra["format"] = req.json_schema if req.json_schema is not None else "json"
        if payload.get("max_tokens") is not None:
            options["num_predict"] = payload["max_tokens"]
        for key in ("temperature", "top_p", "top_k", "seed", "stop", "presence_penalty",
                    "frequency_penalty"):
            if payload.get(key) is not None:
                options[key] = payload[key]
        if method == "generate":
            return "/api/generate", {"model": self.model, "prompt": payload.get("prompt", ""),
                                     "stream": False, "options": options, **extra}
        if method == "chat":
            return "/api/chat", {"model": self.model, "messages": payload.get("messages", []),
                                 "stream": False, "options": options, **extra}
        if method == "embed":
            return "/api/embed", {"model": self.model, "input": payload.get("texts", [])}
        raise self.unsupported(method)

    def reply(self, method: str, data: dict[str, Any], elapsed: float) -> RemoteResult:
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

    def stream_event(self, method: str, line: str) -> tuple[str | None, bool] | None:
        if not line.strip():
            return None
        try:
            event = json.loads(line)
        except ValueError:
            raise self.malformed("stream line", line) from None
        piece = (event.get("message") or {}).get("content") if method == "chat" \
            else event.get("response")
        return piece, bool(event.get("done"))

    def served_models(self, data: Any) -> list[str]:
        return [m.get("name") or m.get("model") for m in data.get("models", [])]

    def serves(self, served: list[str]) -> bool:
        return self.model in served or f"{self.model}:latest" in served
