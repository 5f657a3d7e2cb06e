"""The OpenAI and Ollama adapters against real HTTP servers on loopback: every method, the
timing split, request ids as `X-Request-Id`, and each bad answer surfaced as its own error
naming the endpoint."""

from __future__ import annotations

import asyncio

import pytest

from hpcray.remote import (
    RemoteAuthError,
    RemoteModelError,
    RemoteProtocolError,
    RemoteUnavailable,
)
from hpcray.remote.ollama import OllamaEndpoint
from hpcray.remote.openai import OpenAIEndpoint
from hpcray.services.ledger import read_executed
from hpcray.services.replica import ServiceRequestError
from tests.remote.site import LEDGER_SERVICE, executed_file

pytestmark = pytest.mark.timeout(60)


def test_openai_methods_and_streaming(loopback_server):
    server = loopback_server()
    ep = OpenAIEndpoint("site-a", server.openai(), "noop")
    got = ep.call("generate", {"prompt": "hello there", "max_tokens": 4})
    assert got.result == {"text": "echo: hello there", "prompt_tokens": 1,
                          "completion_tokens": 2, "finish_reason": "stop"}
    assert not got.server_reported and got.round_trip_s > 0.001  # the server sleeps 1 ms
    chat = ep.call("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert chat.result["text"] == "echo: hi"
    assert ep.call("embed", {"texts": ["ab", "abcd"]}).result == {
        "embeddings": [[2.0, 1.0], [4.0, 1.0]], "dim": 2}
    assert "".join(ep.stream("generate", {"prompt": "a b c"})) == "echo: a b c"
    assert ep.probe() > 0
    with pytest.raises(ServiceRequestError, match="serves generate, chat, embed; not 'rank'"):
        ep.call("rank", {})


def test_ollama_reports_inference_and_service_time(loopback_server):
    server = loopback_server(infer_ms=20)
    ep = OllamaEndpoint("gpu-box", server.url_root, "noop")
    got = ep.call("generate", {"prompt": "x", "max_tokens": 3})
    assert got.result["text"] == "echo: x" and got.server_reported
    assert 0.018 < got.inference_s < got.round_trip_s  # prompt eval + eval durations
    assert 0.0002 <= got.service_s < 0.01  # load and the rest of total_duration
    assert ep.call("chat", {"messages": [{"role": "user", "content": "y"}]}).result["text"] \
        == "echo: y"
    assert ep.call("embed", {"texts": ["abc"]}).result["embeddings"] == [[3.0, 1.0]]
    assert "".join(ep.stream("generate", {"prompt": "p q"})) == "echo: p q"
    assert ep.probe() > 0  # "noop" is listed as noop:latest


def test_a_wrong_key_is_an_authentication_error_without_the_key(loopback_server):
    server = loopback_server(api_key="right-key-123")
    ep = OpenAIEndpoint("hosted", server.openai(), "noop", api_key="wrong-key-456")
    with pytest.raises(RemoteAuthError) as info:
        ep.call("generate", {"prompt": "x"})
    assert "hosted" in str(info.value) and server.openai() in str(info.value)
    assert "HTTP 401" in str(info.value) and "wrong-key-456" not in str(info.value)
    with pytest.raises(RemoteAuthError) as info:
        ep.call("generate", {"prompt": "x"}, request_id="id-1")
    assert "wrong-key-456" not in str(info.value) and "right-key-123" not in str(info.value)
    good = OpenAIEndpoint("hosted", server.openai(), "noop", api_key="right-key-123")
    assert good.call("generate", {"prompt": "x"}).result["text"] == "echo: x"


def test_a_request_id_goes_to_the_server_and_none_without_one(loopback_server, tmp_path):
    """Every way of calling (call, stream, acall, astream) on both APIs sends its id as
    `X-Request-Id`, next to the key; the server's ledger holds exactly the ids sent, once
    each, and nothing for requests sent without one or refused."""
    key = "right-key-123"
    server = loopback_server(api_key=key, ledger=executed_file(tmp_path, "box"))
    endpoints = (OpenAIEndpoint("box", server.openai(), "noop", api_key=key),
                 OllamaEndpoint("box", server.url_root, "noop", api_key=key))

    async def on_a_loop(ep) -> None:
        got = await ep.acall("generate", {"prompt": "x"}, request_id=f"{ep.kind}-acall")
        assert got.result["text"] == "echo: x"
        assert "".join([p async for p in ep.astream("generate", {"prompt": "a"},
                                                    request_id=f"{ep.kind}-astream")]) == "echo: a"
        await ep.aclose()

    try:
        for ep in endpoints:
            assert ep.call("generate", {"prompt": "x"}).result["text"] == "echo: x"  # no id
            ep.call("chat", {"messages": [{"role": "user", "content": "y"}]},
                    request_id=f"{ep.kind}-call")
            assert "".join(ep.stream("generate", {"prompt": "a b"},
                                     request_id=f"{ep.kind}-stream")) == "echo: a b"
            asyncio.run(on_a_loop(ep))
            with pytest.raises(RemoteProtocolError):
                ep.call("generate", {"prompt": "!malformed"}, request_id=f"{ep.kind}-bad")
            for bad in ("a\r\nX-Injected: 1", "has space", "", "x" * 256, "é"):
                with pytest.raises(ServiceRequestError, match="a request id is"):
                    ep.call("generate", {"prompt": "x"}, request_id=bad)
    finally:
        for ep in endpoints:
            ep.close()
    executed = read_executed(tmp_path, LEDGER_SERVICE)
    assert executed == {f"{kind}-{how}": [("box", "err" if how == "bad" else "ok")]
                        for kind in ("openai", "ollama")
                        for how in ("call", "stream", "acall", "astream", "bad")}
    assert key not in executed_file(tmp_path, "box").read_text()


def test_a_model_the_endpoint_does_not_serve(loopback_server):
    server = loopback_server(model="llama-3")
    ep = OpenAIEndpoint("site-a", server.openai(), "mistral")
    with pytest.raises(RemoteModelError, match="does not serve model 'mistral'; it serves "
                                               "llama-3"):
        ep.probe()
    with pytest.raises(RemoteModelError, match="does not serve model 'mistral'"):
        ep.call("generate", {"prompt": "x"})
    with pytest.raises(RemoteModelError, match="it serves llama-3:latest"):
        OllamaEndpoint("o", server.url_root, "mistral").probe()


def test_malformed_and_truncated_replies(loopback_server):
    server = loopback_server()
    for ep in (OpenAIEndpoint("a", server.openai(), "noop"),
               OllamaEndpoint("b", server.url_root, "noop")):
        with pytest.raises(RemoteProtocolError, match="not JSON"):
            ep.call("generate", {"prompt": "!malformed"})
        with pytest.raises(RemoteProtocolError, match="the stream stopped before"):
            list(ep.stream("generate", {"prompt": "!truncate"}))


def test_an_unreachable_endpoint_never_reached_a_model():
    ep = OpenAIEndpoint("gone", "http://127.0.0.1:9/v1", "noop", timeout=2)
    with pytest.raises(RemoteUnavailable, match=r"remote endpoint 'gone' \(http://127.0.0.1:9/v1"
                                                r"\): ConnectError") as info:
        ep.call("generate", {"prompt": "x"})
    assert info.value.reached is False


def test_request_fields_go_to_the_endpoint_or_are_refused_by_name():
    """Every sampling field reaches an OpenAI-compatible server (it refuses what it lacks);
    Ollama gets its options and `format`; what an endpoint cannot take is refused, not
    dropped."""
    from hpcray.remote.ollama import OllamaEndpoint
    from hpcray.remote.openai import OpenAIEndpoint

    openai = OpenAIEndpoint("site", "http://127.0.0.1:9/v1", "m")
    ollama = OllamaEndpoint("box", "http://127.0.0.1:9", "m")
    schema = {"type": "object"}
    fields = {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 4, "stop": ["."],
              "seed": 1, "presence_penalty": 0.1, "frequency_penalty": 0.2,
              "response_format": {"type": "json_schema",
                                  "json_schema": {"name": "x", "schema": schema}}}
    try:
        path, body = openai.body("generate", {"prompt": "cell", "n": 2, "logprobs": 1,
                                              **fields})
        assert path == "/completions" and body["n"] == 2 and body["logprobs"] == 1
        assert all(body[k] == v for k, v in fields.items())
        path, body = ollama.body("chat", {"messages": [{"role": "user", "content": "x"}],
                                          **fields})
        assert path == "/api/chat" and body["format"] == schema
        assert body["options"]["num_predict"] == 5 and body["options"]["top_k"] == 4
        assert ollama.body("generate", {"prompt": "x", "response_format": {
            "type": "json_object"}})[1]["format"] == "json"
        for endpoint, payload, field in (
                (openai, {"prompt": "x", "adapter": "qa"}, "adapter"),
                (openai, {"prompt": "x", "tools": []}, "tools"),
                (ollama, {"prompt": "x", "n": 2}, "n"),
                (ollama, {"prompt": "x", "logprobs": 1}, "logprobs")):
            with pytest.raises(ServiceRequestError) as info:
                endpoint.body("generate", payload)
            assert info.value.field == field
    finally:
        openai.close()
        ollama.close()
