"""What an LLM service is asked and what it answers, the same for every backend.

A request is the payload of `generate` (`prompt`) or `chat` (`messages`) with the sampling
fields of the OpenAI API. Each backend says which fields it honours; any other field, or a
value it cannot honour, is refused naming the field (an HTTP 400 with `param`), never
ignored. Results and stream pieces have one shape, which the handle and the OpenAI API read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcray.errors import ServiceRequestError

# every field a backend may honour; `prompt`/`messages` and `adapter` are always read
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n",
                   "presence_penalty", "frequency_penalty", "logprobs", "response_format",
                   "ignore_eos")
MAX_LOGPROBS = 20


@dataclass
class GenerationRequest:
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    adapter: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0  # greedy unless asked: the same answer twice
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # alternatives per token; 0: only the chosen token's
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    ignore_eos: bool = False


def refuse(name: str, why: str) -> ServiceRequestError:
    return ServiceRequestError(f"field {name!r}: {why}", field=name)


def _number(payload: dict[str, Any], name: str, low: float, high: float | None = None) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low \
            or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise refuse(name, f"must be a number {bounds}, got {value!r}")
    return float(value)


def _integer(payload: dict[str, Any], name: str, low: int, high: int | None = None) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise refuse(name, f"must be an integer {bounds}, got {value!r}")
    return value


def parse_request(payload: Any, *, backend: str, honours: frozenset[str] | set[str],
                  max_new_tokens: int, adapters: set[str] | None = None) -> GenerationRequest:
    """The payload as a GenerationRequest; a field the backend does not honour (with a value
    other than the neutral one) is refused by name."""
    if not isinstance(payload, dict):
        raise ServiceRequestError("the payload must be a mapping with 'prompt' or 'messages'")
    req = GenerationRequest(max_tokens=max_new_tokens)
    known = {"prompt", "messages", "adapter", *SAMPLING_FIELDS}
    for name, value in payload.items():
        if name not in known:
            raise refuse(name, f"unknown to {backend}; fields: {', '.join(sorted(known))}")
        if name in SAMPLING_FIELDS and name not in honours and value not in _NEUTRAL[name]:
            raise refuse(name, f"{backend} cannot honour it")
    if "messages" in payload:
        messages = payload["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str)
                and isinstance(m.get("role"), str) for m in messages):
            raise refuse("messages", "must be a non-empty list of {role, content} objects")
        req.messages = messages
    elif "prompt" in payload:
        if not isinstance(payload["prompt"], str):
            raise refuse("prompt", "must be a string")
        req.prompt = payload["prompt"]
    else:
        raise refuse("prompt", "missing: give 'prompt' (generate) or 'messages' (chat)")
    if payload.get("adapter") is not None:
        name = payload["adapter"]
        if not isinstance(name, str) or name not in (adapters or set()):
            raise refuse("adapter", f"no adapter {name!r}; adapters: "
                         f"{', '.join(sorted(adapters or ())) or 'none'}")
        req.adapter = name
    for name in ("max_tokens", "n", "top_k", "seed", "logprobs"):
        if payload.get(name) is None:
            continue
        low, high = {"max_tokens": (1, None), "n": (1, 64), "top_k": (-1, None),
                     "seed": (-(2 ** 63), 2 ** 64 - 1), "logprobs": (0, MAX_LOGPROBS)}[name]
        setattr(req, name, _integer(payload, name, low, high))
    if req.top_k == -1:
        req.top_k = 0
    for name, least, most in (("temperature", 0.0, None), ("top_p", 0.0, 1.0),
                              ("presence_penalty", -2.0, 2.0),
                              ("frequency_penalty", -2.0, 2.0)):
        if payload.get(name) is not None:
            setattr(req, name, _number(payload, name, least, most))
    if req.top_p == 0.0:
        raise refuse("top_p", "must be greater than 0")
    stop = payload.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise refuse("stop", "must be a non-empty string or a list of them")
        req.stop = stops
    if payload.get("ignore_eos") is not None:
        if not isinstance(payload["ignore_eos"], bool):
            raise refuse("ignore_eos", "must be true or false")
        req.ignore_eos = payload["ignore_eos"]
    _response_format(payload.get("response_format"), req)
    return req


def parse_score(payload: Any, adapters: set[str] | None = None
                ) -> tuple[str, list[str], str | None, str]:
    """(prompt, options, adapter, separator) of a `score` request: the log-probability of
    each option as the continuation of the prompt, the two joined by `separator` (" ") and
    tokenized apart (multiple-choice answers scored by likelihood)."""
    if not isinstance(payload, dict):
        raise ServiceRequestError("the payload must be a mapping with 'prompt' and 'options'")
    for name in payload:
        if name not in ("prompt", "options", "adapter", "separator"):
            raise refuse(name, "unknown to score; fields: adapter, options, prompt, separator")
    prompt, options = payload.get("prompt"), payload.get("options")
    if not isinstance(prompt, str):
        raise refuse("prompt", "must be a string")
    if not isinstance(options, list) or not options or not all(
            isinstance(o, str) and o for o in options):
        raise refuse("options", "must be a non-empty list of non-empty strings")
    separator = payload.get("separator", " ")
    if not isinstance(separator, str):
        raise refuse("separator", "must be a string")
    adapter = payload.get("adapter")
    if adapter is not None and adapter not in (adapters or set()):
        raise refuse("adapter", f"no adapter {adapter!r}; adapters: "
                     f"{', '.join(sorted(adapters or ())) or 'none'}")
    return prompt, options, adapter, separator


def parse_new_adapter(payload: Any, loaded: set[str] | list[str]) -> tuple[str, str]:
    """(name, path) of an `add_adapter` request: a new name, and a directory holding a peft
    adapter (adapter_config.json)."""
    name = payload.get("name") if isinstance(payload, dict) else None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not isinstance(name, str) or not name or ":" in name or name == "__base__":
        raise refuse("name", "must be a non-empty string without ':'")
    if name in loaded:
        raise refuse("name", f"adapter {name!r} is already loaded")
    if not isinstance(path, str) or not (Path(path) / "adapter_config.json").is_file():
        raise refuse("path", f"no adapter_config.json in {path!r}")
    return name, path


def _response_format(value: Any, req: GenerationRequest) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        req.json_object = True
        return
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise refuse("response_format", "json_schema needs {'json_schema': {'name': ..., "
                                             "'schema': {...}}}")
        req.json_schema = schema
        return
    raise refuse("response_format", "type must be 'text', 'json_object' or 'json_schema', got "
                                    f"{kind!r}")


_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "max_tokens": (None,), "temperature": (None,), "top_p": (None, 1, 1.0),
    "top_k": (None, 0, -1), "stop": (None, [], ""), "seed": (None,), "n": (None, 1),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None,), "response_format": (None, {"type": "text"}), "ignore_eos": (None, False),
}


def result(choices: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """One answer: the first choice's text, finish reason and logprobs at the top (what the
    handle reads), every choice under `choices` when there are several, and the token
    counts (what the OpenAI API reports as usage)."""
    first = choices[0]
    out = {"text": first["text"], "finish_reason": first["finish_reason"],
           "prompt_tokens": prompt_tokens,
           "completion_tokens": sum(c.pop("tokens") for c in choices)}
    if first.get("logprobs") is not None:
        out["logprobs"] = first["logprobs"]
    if len(choices) > 1:
        out["choices"] = choices
    return out


def piece(index: int, text: str, finish_reason: str | None = None,
          logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One piece of a streamed answer: new text of choice `index`."""
    out: dict[str, Any] = {"index": index, "text": text, "finish_reason": finish_reason}
    if logprobs is not None:
        out["logprobs"] = logprobs
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last item of every streamed answer."""
    return {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


def text_of(item: Any) -> str:
    """The text in a stream item (a piece, a usage record, or a remote endpoint's string)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return item.get("text") or ""
    return ""
