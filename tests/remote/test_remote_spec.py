"""The `remote:` entries of a service: every mistake named with its line before submission,
and no place in the file for a key itself."""

from __future__ import annotations

import pytest

from hpcray.errors import SpecError
from hpcray.spec.loader import loads_workflow

HEAD = "name: r\nallocation: {nodes: 1, walltime: 10m}\nservices:\n  - name: llm\n"


def _load(body: str):
    return loads_workflow(HEAD + body, "wf.yaml")


def test_a_service_with_local_and_remote_instances():
    wf = _load("    deployment: noop\n    remote:\n"
               "      - {url: 'https://api.example.org/v1/', kind: openai, model: m,\n"
               "         api_key_env: EXAMPLE_KEY, weight: 2, max_concurrency: 4}\n"
               "      - {url: 'http://gpu-box:11434', kind: ollama, model: llama3}\n")
    first, second = wf.services[0].remote
    assert first.url == "https://api.example.org/v1" and first.label == "api.example.org:"
    assert second.label == "gpu-box:11434" and wf.services[0].replicas == 1


@pytest.mark.parametrize(("body", "line", "message"), [
    ("    replicas: 0\n", 4, "replicas: 0 needs at least one 'remote' endpoint"),
    ("    replicas: 1\n    remote: [{url: 'http://h:1/v1', kind: openai, model: m}]\n", 4,
     "local replicas need a 'deployment'"),
    ("    replicas: 0\n    remote:\n      - {url: 'https://user:pw@h/v1', kind: openai, "
     "model: m}\n", 7, "put credentials in an environment variable"),
    ("    replicas: 0\n    remote:\n      - {url: 'h:1', kind: openai, model: m}\n", 7,
     "is not an http(s) URL"),
    ("    replicas: 0\n    remote:\n      - {url: 'http://h/v1', kind: openai, model: m,\n"
     "         api_key_env: 'sk-live-123'}\n", 8, "is not an environment variable name"),
    ("    replicas: 0\n    remote:\n      - {url: 'http://h/v1', kind: grpc, model: m}\n", 7,
     "openai"),
])
def test_mistakes_are_named_with_their_line(body, line, message):
    with pytest.raises(SpecError) as info:
        _load(body)
    text = str(info.value)
    assert message in text and f"wf.yaml:{line}:" in text, text
    assert "sk-live-123" not in text and "pw@" not in text  # nothing secret is echoed
