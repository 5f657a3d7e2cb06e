"""OpenAI-compatible servers: vLLM's server, hosted APIs, another hpcray run's HTTP API.
`url` is the API's base, as OpenAI clients take it (for example http://host:8000/v1).

These APIs report no server timing, so the whole round trip comes back as measured; the
federation splits it with the endpoint's probe round trip (docs/remote.md)."""

from __future__ import annotations

import json
from typing import Any

from hpcray import llm
from hpcray.errors import ServiceRequestError
from hpcray.remote.base import RemoteEndpoint, RemoteResult

# every sampling field goes to the server, which refuses what it does not support (a 400
# naming it reaches the caller as a ServiceRequestError); vLLM's server takes top_k, ignore_eos
HONOURS = frozenset(llm.SAMPLING_FIELDS)


class OpenAIEndpoint(RemoteEndpoint):
    kind = "openai"
    probe_path = "/models"
    end_of_stream = "[DONE]"

    def body(self, method: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not isinstance(payload, dict):
            raise ServiceRequestError(f"{self.where}: payload must be a mapping")
        if method in ("generate", "chat"):
            llm.parse_request(payload, backend=self.where, honours=HONOURS,
                              max_new_tokens=1, adapters=set())
        params = {k: payload[k] for k in llm.SAMPLING_FIELDS if payload.get(k) is not None}
        if method == "generate":
            return "/completions", {"model": self.model, "prompt": payload.get("prompt", ""),
                                    **params}
        if method == "chat":
            return "/chat/completions", {"model": self.model,
                                         "messages": payload.get("messages", []), **params}
        if method == "embed":
            return "/embeddings", {"model": self.model, "input": payload.get("texts", [])}
        raise self.unsupported(method)

    def reply(self, method: str, data: dict[str, Any], elapsed: float) -> RemoteResult:
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

    def stream_event(self, method: str, line: str) -> tuple[str | None, bool] | None:
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            return None, True
        try:
            choice = json.loads(data)["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise self.malformed("stream event", data) from None
        piece = (choice.get("delta") or {}).get("content") if method == "chat" \
            else choice.get("text")
        return piece, False

    def served_models(self, data: Any) -> list[str]:
        return [m.get("id") for m in data.get("data", [])]
