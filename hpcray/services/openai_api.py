"""An OpenAI-compatible HTTP API in front of the services: /v1/models, /v1/completions,
/v1/chat/completions (with streaming), /v1/embeddings. The `model` of a request is the name
of a service, or `service:adapter` for one of its LoRA adapters. The sampling fields of
OpenAI's API (and vLLM's `top_k`, `ignore_eos`) go to the service, which refuses what it
cannot honour; a field this API does not know is refused too. Bad requests get a 4xx naming
the field (`param`), never a 500 or a silently ignored field. Every non-streamed answer has
`usage`; a stream has it in a last chunk when `stream_options.include_usage` is set.

Requests to a service on the direct path go over its replicas' sockets (AsyncDirectClient,
one socket per replica for all requests in flight); `transport: serve` services through Serve
handles."""

# No `from __future__ import annotations` here: FastAPI must see the request models as
# classes, not strings, through Serve's ingress wrapper (else bodies turn into query params).
import asyncio
import json
import time
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from hpcray.services.direct.aclient import AsyncDirectClient
from hpcray.services.direct.directory import directory
from hpcray.services.http_access import authorized, refusal
from hpcray.services.names import app_name

app = FastAPI(title="hpcray services (OpenAI-compatible)")
# Declared in the OpenAPI description; enforced only when the run has a token (endpoints.token):
# first by Serve's proxy (http_access.TokenGate, before the body is read), then again here.
bearer = HTTPBearer(auto_error=False, description="the run's secrets/http-token, when "
                    "endpoints.token is on")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
INGRESS_MAX_ONGOING = 4096  # requests at once through this API (Serve's default is 5)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class _Sampling(BaseModel):
    """Fields both text endpoints take. Unknown fields are kept (extra="allow") so that the
    handler can refuse them by name."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    ignore_eos: bool | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str]


_PASSED = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n",
           "presence_penalty", "frequency_penalty", "response_format", "ignore_eos")


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": None}}, status_code=status)


def _caller_error(exc: Exception) -> JSONResponse | None:
    cause = getattr(exc, "cause", exc)
    if isinstance(cause, (ValueError, TypeError, KeyError)):
        return _error(400, f"{type(cause).__name__}: {cause}", getattr(cause, "field", None))
    return None


def _payload(req: ChatRequest | CompletionRequest) -> dict[str, Any] | JSONResponse:
    """The service's payload from a request, or a 400 naming a field this API refuses."""
    for name in req.model_extra or {}:
        return _error(400, f"field {name!r} is not supported by this API", name)
    out: dict[str, Any] = {k: getattr(req, k) for k in _PASSED if getattr(req, k) is not None}
    if isinstance(req, ChatRequest):
        out["messages"] = [m.model_dump() for m in req.messages]
        if req.max_completion_tokens is not None:
            out.setdefault("max_tokens", req.max_completion_tokens)
        if req.top_logprobs is not None and not req.logprobs:
            return _error(400, "top_logprobs needs logprobs: true", "top_logprobs")
        if req.logprobs:
            out["logprobs"] = req.top_logprobs or 0
    else:
        out["prompt"] = req.prompt
        if req.logprobs is not None:
            out["logprobs"] = req.logprobs
    return out


def _completion_logprobs(tokens: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t["token"])
    return {"tokens": [t["token"] for t in tokens],
            "token_logprobs": [t["logprob"] for t in tokens],
            "top_logprobs": [{tok: lp for tok, lp in t["top"]} for t in tokens],
            "text_offset": offsets}


def _chat_logprobs(tokens: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {"content": [{"token": t["token"], "logprob": t["logprob"],
                         "bytes": list(t["token"].encode()),
                         "top_logprobs": [{"token": tok, "logprob": lp,
                                           "bytes": list(tok.encode())}
                                          for tok, lp in t["top"]]} for t in tokens]}


@serve.deployment(name="openai", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=INGRESS_MAX_ONGOING)
@serve.ingress(app)
class OpenAIIngress:
    def __init__(self, services: list[str], token_sha256: str | None = None,
                 transports: dict[str, str] | None = None) -> None:
        self.services = services
        self.token_sha256 = token_sha256
        self.transports = transports or {}
        self._clients: dict[str, AsyncDirectClient] = {}
        # this run's OpenAPI description says which models exist: clients and fuzzers see it
        for body in ("ChatRequest", "CompletionRequest", "EmbeddingRequest"):
            schema = app.openapi()["components"]["schemas"][body]["properties"]["model"]
            schema["enum"] = list(services)

    def _refused(self, credentials: Credentials) -> JSONResponse | None:
        header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        return None if authorized(header, self.token_sha256) else refusal()

    def _route(self, model: str, payload: dict[str, Any] | None = None):
        """The service of `service` or `service:adapter` (the adapter goes into the payload),
        or a 404 naming the services."""
        service, _, adapter = model.partition(":")
        if service not in self.services:
            return None, _error(404, f"no service named {service!r}; services: "
                                     f"{', '.join(self.services)}", "model")
        if adapter and payload is not None:
            payload["adapter"] = adapter
        return service, None

    def _direct(self, service: str) -> AsyncDirectClient | None:
        """The service's replicas' sockets, when it is on the direct path."""
        if self.transports.get(service) != "direct":
            return None
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = AsyncDirectClient(service, directory=directory())
        return client

    async def _call(self, service: str, request: dict[str, Any],
                    replica_wait_s: float | None = None) -> dict[str, Any]:
        """{"result", "replica", "node"} of one request, on the service's transport."""
        client = self._direct(service)
        if client is None:
            return await serve.get_app_handle(app_name(service)).handle.remote(request)
        reply = await client.call(request["method"], request["payload"],
                                  replica_wait_s=replica_wait_s)
        return {"result": reply.payload, "replica": reply.replica,
                "node": client.table.get(reply.replica, {}).get("node")}

    def _stream(self, service: str, request: dict[str, Any]):
        """(the stream's items as the replica makes them, how to stop it early)."""
        client = self._direct(service)
        if client is not None:
            pieces = client.stream(request["method"], request["payload"])
            return pieces, pieces.aclose  # type: ignore[attr-defined]  # an async generator
        chunks = serve.get_app_handle(app_name(service)).options(
            stream=True).handle_stream.remote(request)

        async def items():
            async for chunk in chunks:
                yield chunk["delta"]

        async def stop():
            chunks.cancel()

        return items(), stop

    async def _adapters(self, service: str) -> list[str]:
        try:
            out = await self._call(service, {"id": uuid.uuid4().hex[:16], "method": "adapters",
                                             "payload": None}, replica_wait_s=0)
        except Exception:  # noqa: BLE001 - a service without adapters, or with no replica now
            return []
        names = out["result"]
        return names if isinstance(names, list) else []

    @app.get("/models")
    async def models(self, credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        adapters = await asyncio.gather(*(self._adapters(s) for s in self.services))
        ids = [s for s in self.services]
        ids += [f"{s}:{a}" for s, names in zip(self.services, adapters, strict=True)
                for a in names]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0,
                                            "owned_by": "hpcray", "root": i.split(":")[0]}
                                           for i in ids]}

    async def _generate(self, req, method: str, kind: str):
        payload = _payload(req)
        if isinstance(payload, JSONResponse):
            return payload
        service, missing = self._route(req.model, payload)
        if missing is not None:
            return missing
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        request = {"id": rid, "method": method, "payload": payload}
        if req.stream:
            pieces, stop = self._stream(service, request)
            try:  # a refusal (bad field, prompt too long) is a 400, not a broken stream
                first = await pieces.__anext__()
            except StopAsyncIteration:
                first = None
            except Exception as exc:  # noqa: BLE001 - caller errors become 400s
                return _caller_error(exc) or _error(500, f"{type(exc).__name__}: {exc}")
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                self._sse(pieces, stop, first, request, req.model, kind, created, req.n or 1,
                          include_usage), media_type="text/event-stream")
        try:
            out = await self._call(service, request)
        except Exception as exc:  # noqa: BLE001 - caller errors become 400s
            return _caller_error(exc) or _error(500, f"{type(exc).__name__}: {exc}")
        result = out["result"]
        usage = {"prompt_tokens": result.get("prompt_tokens", 0),
                 "completion_tokens": result.get("completion_tokens", 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choices = []
        for index, c in enumerate(result.get("choices") or [result]):
            finish = c.get("finish_reason") or "stop"
            if kind == "chat":
                choices.append({"index": index, "message": {"role": "assistant",
                                                            "content": c["text"]},
                                "finish_reason": finish,
                                "logprobs": _chat_logprobs(c.get("logprobs"))})
            else:
                choices.append({"index": index, "text": c["text"], "finish_reason": finish,
                                "logprobs": _completion_logprobs(c.get("logprobs"))})
        obj = "chat.completion" if kind == "chat" else "text_completion"
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": req.model,
                             "choices": choices, "usage": usage,
                             "hpcray": {"replica": out["replica"], "node": out["node"]}},
                            headers={"x-hpcray-replica": out["replica"]})

    async def _sse(self, pieces, stop, first, request, model: str, kind: str, created: int,
                   n: int, include_usage: bool):
        """Server-sent events from the replica's stream, piece by piece. When the client goes
        away, Starlette cancels this generator; cancelling the replica's stream then aborts
        the request in the engine."""
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
            body: dict[str, Any] = {"id": request["id"], "object": obj, "created": created,
                                    "model": model, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        def choice(item: dict[str, Any]) -> dict[str, Any]:
            index, finish = item.get("index", 0), item.get("finish_reason")
            if kind == "chat":
                delta = {"content": item["text"]} if item.get("text") else {}
                return {"index": index, "delta": delta, "finish_reason": finish,
                        "logprobs": _chat_logprobs(item.get("logprobs"))}
            return {"index": index, "text": item.get("text", ""), "finish_reason": finish,
                    "logprobs": _completion_logprobs(item.get("logprobs"))}

        finished = False
        try:
            if kind == "chat":
                yield event([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None} for i in range(n)])
            delta = first
            while delta is not None:
                if isinstance(delta, dict) and "usage" in delta:
                    if include_usage:
                        usage = dict(delta["usage"])
                        usage["total_tokens"] = usage["prompt_tokens"] + \
                            usage["completion_tokens"]
                        yield event([], usage)
                elif isinstance(delta, dict):
                    yield event([choice(delta)])
                else:  # a service that streams plain text
                    yield event([choice({"text": str(delta)})])
                try:
                    delta = await pieces.__anext__()
                except StopAsyncIteration:
                    delta = None
            finished = True
        except Exception as exc:  # noqa: BLE001 - the stream ends with an explicit error
            yield f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n"
            return
        finally:
            if not finished:
                await stop()
        yield "data: [DONE]\n\n"

    @app.post("/chat/completions")
    async def chat(self, req: ChatRequest, credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        return await self._generate(req, "chat", "chat")

    @app.post("/completions")
    async def completions(self, req: CompletionRequest,
                          credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        return await self._generate(req, "generate", "completion")

    @app.post("/embeddings")
    async def embeddings(self, req: EmbeddingRequest,
                         credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        service, missing = self._route(req.model)
        if missing is not None:
            return missing
        texts = [req.input] if isinstance(req.input, str) else req.input
        try:
            out = await self._call(service, {"id": uuid.uuid4().hex[:16], "method": "embed",
                                             "payload": {"texts": texts}})
        except Exception as exc:  # noqa: BLE001
            return _caller_error(exc) or _error(500, f"{type(exc).__name__}: {exc}")
        result = out["result"]
        data = [{"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(result["embeddings"])]
        tokens = result.get("tokens", 0)
        return {"object": "list", "data": data, "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "hpcray": {"replica": out["replica"], "node": out["node"]}}
