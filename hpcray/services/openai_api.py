"""An OpenAI-compatible HTTP API in front of the services: /v1/models, /v1/completions,
/v1/chat/completions (with streaming), /v1/embeddings. The `model` of a request is the name
of a service. Bad requests get a 4xx naming the field (FastAPI/pydantic validation, or the
service's own refusal, e.g. a prompt longer than the context), never a 500 or a drop."""

# No `from __future__ import annotations` here: FastAPI must see the request models as
# classes, not strings, through Serve's ingress wrapper (else bodies turn into query params).
import json
import time
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from hpcray.services.http_access import authorized, refusal
from hpcray.services.manager import app_name

app = FastAPI(title="hpcray services (OpenAI-compatible)")
# Declared in the OpenAPI description; enforced only when the run has a token (endpoints.token).
bearer = HTTPBearer(auto_error=False, description="the run's secrets/http-token, when "
                    "endpoints.token is on")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    stream: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    stream: bool = False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str]


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": None}}, status_code=status)


def _caller_error(exc: Exception) -> JSONResponse | None:
    cause = getattr(exc, "cause", exc)
    if isinstance(cause, (ValueError, TypeError, KeyError)):
        return _error(400, f"{type(cause).__name__}: {cause}")
    return None


def _params(req: ChatRequest | CompletionRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.max_tokens is not None:
        out["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        out["temperature"] = req.temperature
    return out


@serve.deployment(name="openai", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class OpenAIIngress:
    def __init__(self, services: list[str], token_sha256: str | None = None) -> None:
        self.services = services
        self.token_sha256 = token_sha256
        # this run's OpenAPI description says which models exist: clients and fuzzers see it
        for body in ("ChatRequest", "CompletionRequest", "EmbeddingRequest"):
            schema = app.openapi()["components"]["schemas"][body]["properties"]["model"]
            schema["enum"] = list(services)

    def _refused(self, credentials: Credentials) -> JSONResponse | None:
        header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        return None if authorized(header, self.token_sha256) else refusal()

    def _handle(self, model: str):
        if model not in self.services:
            return None
        return serve.get_app_handle(app_name(model))

    @app.get("/models")
    async def models(self, credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        return {"object": "list", "data": [{"id": s, "object": "model", "created": 0,
                                            "owned_by": "hpcray"} for s in self.services]}

    async def _generate(self, req, method: str, payload: dict[str, Any], kind: str):
        handle = self._handle(req.model)
        if handle is None:
            return _error(404, f"no service named {req.model!r}; services: "
                          f"{', '.join(self.services)}", "model")
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        request = {"id": rid, "method": method, "payload": payload}
        if req.stream:
            return StreamingResponse(self._sse(handle, request, req.model, kind, created),
                                     media_type="text/event-stream")
        try:
            out = await handle.handle.remote(request)
        except Exception as exc:  # noqa: BLE001 - caller errors become 400s
            return _caller_error(exc) or _error(500, f"{type(exc).__name__}: {exc}")
        result = out["result"]
        usage = {"prompt_tokens": result.get("prompt_tokens", 0),
                 "completion_tokens": result.get("completion_tokens", 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = result.get("finish_reason", "stop")
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]},
                      "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": result["text"], "finish_reason": finish,
                      "logprobs": None}
            obj = "text_completion"
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": req.model,
                             "choices": [choice], "usage": usage,
                             "hpcray": {"replica": out["replica"], "node": out["node"]}},
                            headers={"x-hpcray-replica": out["replica"]})

    async def _sse(self, handle, request, model: str, kind: str, created: int):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: dict[str, Any] | str, finish: str | None) -> str:
            if kind == "chat":
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
            body = {"id": request["id"], "object": obj, "created": created, "model": model,
                    "choices": [choice]}
            return f"data: {json.dumps(body)}\n\n"

        if kind == "chat":
            yield chunk({"role": "assistant", "content": ""}, None)
        try:
            async for piece in handle.options(stream=True).handle_stream.remote(request):
                yield chunk({"content": piece["delta"]} if kind == "chat" else piece["delta"],
                            None)
        except Exception as exc:  # noqa: BLE001 - the stream ends with an explicit error
            yield f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n"
            return
        yield chunk({} if kind == "chat" else "", "stop")
        yield "data: [DONE]\n\n"

    @app.post("/chat/completions")
    async def chat(self, req: ChatRequest, credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        payload = {"messages": [m.model_dump() for m in req.messages], **_params(req)}
        return await self._generate(req, "chat", payload, "chat")

    @app.post("/completions")
    async def completions(self, req: CompletionRequest,
                          credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        return await self._generate(req, "generate", {"prompt": req.prompt, **_params(req)},
                                    "completion")

    @app.post("/embeddings")
    async def embeddings(self, req: EmbeddingRequest,
                         credentials: Credentials):
        if refused := self._refused(credentials):
            return refused
        handle = self._handle(req.model)
        if handle is None:
            return _error(404, f"no service named {req.model!r}", "model")
        texts = [req.input] if isinstance(req.input, str) else req.input
        try:
            out = await handle.handle.remote({"id": uuid.uuid4().hex[:16], "method": "embed",
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
