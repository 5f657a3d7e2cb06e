"""Program services without a cluster: the spec's checks, the probes' defaults, the placeholders,
the HTTP request a handle sends, and one replica's program started, probed and stopped."""

from __future__ import annotations

import asyncio
import sys

import psutil
import pytest
from pydantic import ValidationError

from hpcray.errors import ServiceError, ServiceRequestError
from hpcray.services import program
from hpcray.spec.services import ProbeSpec, ServiceSpec
from tests.conftest import FIXTURES

PROGRAM = str(FIXTURES / "services" / "http_program.py")


def spec(**fields) -> ServiceSpec:
    return ServiceSpec.model_validate({"name": "p", "command": ["server", "{port}"], **fields})


@pytest.mark.parametrize(("fields", "message"), [
    ({"command": "server --port {port}"}, "as a list of arguments"),
    ({"command": ["server", "{prot}"]}, r"unknown placeholder \{prot\}"),
    ({"deployment": "noop"}, "either 'deployment'"),
    ({"api": "ollama"}, "api: ollama needs 'model'"),
    ({"readiness": {"http": "health"}}, "must be a path starting with /"),
    ({"readiness": {"http": "/h", "tcp": True}}, "exactly one of"),
    ({"readiness": {"output": "("}}, "not a regular expression"),
    ({"env": {"1BAD": "x"}}, "not an environment variable name"),
    ({"env": {"OLLAMA_HOST": "{hots}:{port}"}}, r"unknown placeholder \{hots\} in OLLAMA_HOST"),
    ({"command": ["server", "--model", "{model}"]}, r"\{model\} needs the service's 'model'"),
])
def test_bad_program_entries_are_refused_with_the_reason(fields, message):
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_program_fields_on_a_class_service_are_refused():
    with pytest.raises(ValidationError, match="restarts, api: only for program"):
        ServiceSpec.model_validate({"name": "c", "deployment": "noop", "restarts": 2,
                                    "api": "openai"})


def test_probe_defaults_follow_the_api():
    assert program.readiness_probe(spec(api="openai")) == ProbeSpec(http="/v1/models")
    assert program.readiness_probe(spec(api="ollama", model="m")) == ProbeSpec(http="/api/tags")
    assert program.readiness_probe(spec()) == ProbeSpec(tcp=True)
    # an output pattern is seen once: liveness is then only that the program runs
    assert program.liveness_probe(spec(readiness={"output": "up"})) is None
    assert program.liveness_probe(spec(readiness={"http": "/h"})) == ProbeSpec(http="/h")


def test_placeholders_are_filled_and_other_braces_kept():
    values = {"port": "20021", "host": "10.0.0.5"}
    assert program.fill("{host}:{port}", values) == "10.0.0.5:20021"
    assert program.fill('{"a": 1}', values) == '{"a": 1}'


@pytest.mark.parametrize(("payload", "field"), [
    ("GET /", "payload"),
    ({"method": "BREW", "path": "/"}, "payload.method"),
    ({"path": "health"}, "payload.path"),
    ({"path": "/", "headers": ["x"]}, "payload.headers"),
])
def test_a_bad_http_request_names_its_field(payload, field):
    with pytest.raises(ServiceRequestError) as err:
        program._http_request(payload)
    assert err.value.field == field


def test_http_request_defaults_to_post_with_a_body():
    assert program._http_request({"path": "/x", "json": {"a": 1}}) == (
        "POST", "/x", {"json": {"a": 1}})
    assert program._http_request({"path": "/x"})[0] == "GET"


@pytest.mark.timeout(60)
def test_one_replica_starts_answers_and_stops_its_program(tmp_path):
    """Outside Serve (no replica context, no port block): a port the kernel picks."""
    service = program.ProgramService(ServiceSpec.model_validate({
        "name": "echo", "command": [sys.executable, PROGRAM, "--port", "{port}"],
        "readiness": {"output": "listening on"}}).model_dump(mode="json"),
        run_dir=str(tmp_path))
    try:
        pid = service.process.pid
        reply = asyncio.run(service.request({"path": "/echo", "json": {"id": "x"}}))
        assert reply["status"] == 200 and reply["json"]["id"] == "x"
        service.check_health()
        with pytest.raises(ServiceRequestError, match="speaks http"):
            asyncio.run(service.generate({"prompt": "x"}))
        tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    finally:
        service.shutdown()
    assert not [p for p in tree if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    log = service.log_path.read_text()
    assert "served x" in log and "exited with status" in log


@pytest.mark.timeout(60)
def test_env_placeholders_are_filled_and_the_program_runs_from_the_workflow_dir(tmp_path):
    """OLLAMA_HOST: "{host}:{port}" is how Ollama takes its address; `./server` is the
    workflow directory's."""
    (tmp_path / "server.py").write_text(
        "import os, sys\nprint('at', os.getcwd(), os.environ['LISTEN'], flush=True)\n"
        "import time\ntime.sleep(60)\n")
    service = program.ProgramService(ServiceSpec.model_validate({
        "name": "where", "command": [sys.executable, "server.py"],
        "env": {"LISTEN": "{host}:{port}"}, "readiness": {"output": "^at "}}
    ).model_dump(mode="json"), run_dir=str(tmp_path / "run"), workflow_dir=str(tmp_path))
    try:
        line = service.process.last_lines()
    finally:
        service.shutdown()
    assert line == f"at {tmp_path} 127.0.0.1:{service.port}"


@pytest.mark.timeout(60)
def test_a_program_that_exits_before_it_is_ready_shows_its_output(tmp_path):
    with pytest.raises(ServiceError, match=r"exited with status 3 before it was ready(.|\n)*"
                                           r"no model here"):
        program.ProgramService(ServiceSpec.model_validate({
            "name": "bad", "command": [sys.executable, "-c",
                                       "print('no model here'); raise SystemExit(3)"],
        }).model_dump(mode="json"), run_dir=str(tmp_path))


@pytest.mark.parametrize("entry", [
    {"name": "c", "deployment": "noop"},
    {"name": "p", "command": ["server", "{port}"], "api": "openai", "restarts": 1,
     "stop_timeout": 3, "env": {"A": "{host}"}, "container": {"image": "img", "runtime": "podman"}},
])
def test_a_service_survives_the_round_trip_through_resolved_json(entry):
    """The job validates the workflow again from its dump: nothing set by default may look
    like a field the user gave."""
    first = ServiceSpec.model_validate(entry)
    assert ServiceSpec.model_validate(first.model_dump(mode="json")) == first
