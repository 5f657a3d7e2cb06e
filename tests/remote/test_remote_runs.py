"""Remote endpoints in real runs: one service over a local NOOP replica and a remote server,
a service with remote endpoints only, an unreachable endpoint at start, and an API key that
never lands in the run directory."""

from __future__ import annotations

import json
import subprocess

import pytest

import hpcray
from tests.conftest import ONE_NODE, run_beside

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SECRET = "sk-planted-4f1c9e77d0"


def _remote(url: str, name: str = "cloud") -> str:
    return (f"    remote:\n      - {{url: '{url}', kind: openai, model: noop, name: {name}, "
            "api_key_env: HPCRAY_TEST_KEY}\n")


def test_local_and_remote_instances_behind_one_handle(tmp_path, run_root, loopback_server,
                                                      monkeypatch):
    """`llm`: a local NOOP replica and a remote server; `cloud`: the remote server only."""
    server = loopback_server(api_key=SECRET)
    monkeypatch.setenv("HPCRAY_TEST_KEY", SECRET)
    sub, st = run_beside(
        "remote", tmp_path.name,
        f"name: fed\n{ONE_NODE}services:\n"
        "  - name: llm\n    deployment: noop\n    args: {reply: local}\n"
        f"    resources: {{cpus: 0.25}}\n{_remote(server.openai())}"
        f"  - name: cloud\n    replicas: 0\n{_remote(server.openai())}"
        "driver:\n  function: drive_remote:main_each\n"
        "  args: {services: {llm: true, cloud: true}, n: 200}\n", run_root)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    got = result["llm"]
    instances = got["by_instance"]
    assert "cloud" in instances and sum(instances.values()) == 200
    assert len(instances) == 2  # the local replica answers under its replica id
    assert "local" in got["texts"] and any(t.startswith("echo: q") for t in got["texts"])
    assert got["many"] == 32
    assert got["streamed"] == "echo: a b"  # the NOOP replica cannot stream: the remote did
    assert result["cloud"]["by_instance"] == {"cloud": 200}  # no local replica at all
    assert result["cloud"]["streamed"] == "echo: a b"
    endpoints = json.loads((sub.run_dir / "endpoints.json").read_text())["services"]["llm"]
    assert endpoints["remote"] == [{"name": "cloud", "url": server.openai(), "kind": "openai",
                                    "model": "noop", "api_key_env": "HPCRAY_TEST_KEY"}]
    # the planted key is in no file of the run
    found = subprocess.run(["grep", "-rl", SECRET, str(sub.run_dir)], capture_output=True,
                           text=True).stdout
    assert found == "", f"the API key leaked into {found}"


def test_another_hpcray_runs_http_api_as_a_remote_endpoint(tmp_path, run_root):
    """Site A: a run serving NOOP over its OpenAI-compatible HTTP API. Site B: a run whose
    service has no local replica, only A as a remote endpoint."""
    from tests.conftest import assert_nothing_left_of, finish_told, submit_beside, wait_until

    a = submit_beside("remote", f"site-a-{tmp_path.name}",
                      f"name: sitea\n{ONE_NODE}services:\n"
                      "  - {name: llm, deployment: noop, args: {reply: from-a},"
                      " resources: {cpus: 0.25}}\n"
                      "driver:\n  function: drive_remote:serve_until_told\n", run_root)
    try:
        assert wait_until(lambda: (a.run_dir / "endpoints.json").exists()
                          or hpcray.status(a.run_dir).finished, 120)
        openai_url = json.loads((a.run_dir / "endpoints.json").read_text())["openai"]
        sub, st = run_beside(
            "remote", tmp_path.name,
            f"name: siteb\n{ONE_NODE}services:\n  - name: llm\n    replicas: 0\n"
            f"    remote: [{{url: '{openai_url}', kind: openai, model: llm, name: site-a}}]\n"
            "driver:\n  function: drive_remote:main\n  args: {n: 30}\n", run_root)
        assert st.state == "completed", hpcray.logs(sub.run_dir)
        got = json.loads((sub.run_dir / "driver-result.json").read_text())
        assert got["by_instance"] == {"site-a": 30} and got["texts"] == ["from-a"]
    finally:
        final = finish_told(a.run_dir, "done")
    assert final.state == "completed", hpcray.logs(a.run_dir)
    assert_nothing_left_of(a.run_dir)


def test_an_unreachable_endpoint_fails_the_run_at_start_naming_it(tmp_path, run_root,
                                                                  monkeypatch):
    monkeypatch.setenv("HPCRAY_TEST_KEY", SECRET)
    sub, st = run_beside("remote", tmp_path.name,
                         f"name: fedx\n{ONE_NODE}"
                         "services:\n  - name: llm\n    deployment: noop\n"
                         f"{_remote('http://127.0.0.1:9/v1')}"
                         "driver:\n  function: drive_remote:main\n", run_root)
    assert st.state == "failed"
    assert "remote endpoint 'cloud' (http://127.0.0.1:9/v1)" in st.error
    assert SECRET not in hpcray.logs(sub.run_dir)
