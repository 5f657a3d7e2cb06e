"""The LLM request every backend reads: fields it honours, fields refused by name."""

from __future__ import annotations

import pickle

import pytest

from hpcray import llm
from hpcray.errors import ServiceRequestError

ALL = frozenset(llm.SAMPLING_FIELDS)
FEW = frozenset({"max_tokens", "temperature", "stop"})


def parse(payload, honours=ALL, adapters=None):
    return llm.parse_request(payload, backend="test", honours=honours, max_new_tokens=32,
                             adapters=adapters)


def test_defaults_and_every_field():
    req = parse({"prompt": "cell"})
    assert (req.prompt, req.max_tokens, req.temperature, req.n, req.stop) == ("cell", 32, 0.0,
                                                                              1, [])
    req = parse({"messages": [{"role": "user", "content": "dose"}], "max_tokens": 5,
                 "temperature": 0.7, "top_p": 0.9, "top_k": -1, "stop": "\n", "seed": 3,
                 "n": 2, "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": 0,
                 "ignore_eos": True, "response_format": {
                     "type": "json_schema", "json_schema": {"name": "x",
                                                            "schema": {"type": "object"}}}})
    assert req.messages == [{"role": "user", "content": "dose"}] and req.prompt is None
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k) == (5, 0.7, 0.9, 0)
    assert (req.stop, req.seed, req.n, req.logprobs, req.ignore_eos) == (["\n"], 3, 2, 0, True)
    assert req.json_schema == {"type": "object"} and not req.json_object
    assert parse({"prompt": "x", "response_format": {"type": "json_object"}}).json_object


@pytest.mark.parametrize("payload, field", [
    ({"prompt": "x", "tools": []}, "tools"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "response_format": {"type": "xml"}}, "response_format"),
    ({"prompt": "x", "response_format": {"type": "json_schema"}}, "response_format"),
    ({"prompt": 5}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"prompt": "x", "adapter": "nosuch"}, "adapter"),
    ({"prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
])
def test_bad_values_are_refused_naming_the_field(payload, field):
    with pytest.raises(ServiceRequestError) as info:
        parse(payload, adapters={"a1"})
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_a_field_the_backend_cannot_honour_is_refused_unless_neutral():
    for payload, field in (({"presence_penalty": 0.5}, "presence_penalty"),
                           ({"logprobs": 0}, "logprobs"), ({"n": 2}, "n"),
                           ({"response_format": {"type": "json_object"}}, "response_format")):
        with pytest.raises(ServiceRequestError, match="test cannot honour it") as info:
            parse({"prompt": "x", **payload}, honours=FEW)
        assert info.value.field == field
    # the neutral value asks for nothing the backend lacks
    req = parse({"prompt": "x", "presence_penalty": 0, "n": 1, "top_p": 1.0, "logprobs": None,
                 "response_format": {"type": "text"}}, honours=FEW)
    assert req.n == 1 and req.presence_penalty == 0.0


def test_adapters_and_the_refusal_survive_pickling():
    assert parse({"prompt": "x", "adapter": "a1"}, adapters={"a1", "a2"}).adapter == "a1"
    error = pickle.loads(pickle.dumps(ServiceRequestError("bad", field="top_k")))
    assert isinstance(error, ValueError) and error.field == "top_k" and str(error) == "bad"


def test_results_and_stream_items():
    out = llm.result([{"index": 0, "text": "a", "finish_reason": "stop", "tokens": 2},
                      {"index": 1, "text": "bc", "finish_reason": "length", "tokens": 3}], 7)
    assert out["text"] == "a" and out["completion_tokens"] == 5 and out["prompt_tokens"] == 7
    assert [c["text"] for c in out["choices"]] == ["a", "bc"]
    single = llm.result([{"index": 0, "text": "a", "finish_reason": "stop", "tokens": 2,
                          "logprobs": [{"token": "a", "logprob": -0.1, "top": []}]}], 1)
    assert "choices" not in single and single["logprobs"][0]["token"] == "a"
    assert llm.text_of(llm.piece(0, "x")) == "x" and llm.text_of(llm.usage(1, 2)) == ""
    assert llm.text_of("remote piece") == "remote piece"
