"""The services section: names, start order, resources; errors name the line."""

from __future__ import annotations

import pytest

from hpcray.errors import SpecError
from hpcray.spec import loads_workflow
from hpcray.spec.services import ServiceSpec, check_service_graph


def svc(name, after=()):
    return ServiceSpec(name=name, deployment="noop", after=list(after))


def test_levels_follow_after():
    levels = check_service_graph([svc("llm"), svc("vep"), svc("rag", ["llm", "vep"]),
                                  svc("judge", ["rag"])])
    assert [[s.name for s in level] for level in levels] == [["llm", "vep"], ["rag"], ["judge"]]


@pytest.mark.parametrize("text,message", [
    ("  - {name: a, deployment: noop}\n  - {name: a, deployment: noop}\n", "two services"),
    ("  - {name: a, deployment: noop, after: [b]}\n", "unknown service 'b'"),
    ("  - {name: a, deployment: noop, after: [b]}\n  - {name: b, deployment: noop, after: [a]}\n",
     "cycle"),
    ("  - {name: a, deployment: noop, after: [a]}\n", "after itself"),
    ("  - {name: LLM, deployment: noop}\n", "not a valid service name"),
    ("  - {name: a, deployment: noop, replicas: 0}\n", "replicas: 0 needs at least one 'remote'"),
    ("  - {name: a, deployment: noop, resources: {gpu: 1}}\n", "unknown key 'gpu'"),
    ("  - {name: a, deployment: noop, resources: {node: n1, nodes: [n2]}}\n", "not both"),
])
def test_bad_services(text, message):
    with pytest.raises(SpecError, match=message) as info:
        loads_workflow("name: x\nservices:\n" + text, "wf.yaml")
    assert info.value.line is not None and info.value.line >= 2
