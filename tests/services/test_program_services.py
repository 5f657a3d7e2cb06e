"""Program services in real runs: a program (here a small Python HTTP server) run by each
replica on a port of the node's own block, readied by its output or an HTTP probe,
restarted when it dies, and stopped with everything it started."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import pytest

import hpcray
from hpcray.errors import SpecError
from tests.conftest import FIXTURES, ONE_NODE, assert_nothing_left_of, run_beside, submit_beside
from tests.fixtures.containers import Podman

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PROGRAM = str(FIXTURES / "services" / "http_program.py")
MODEL_SERVER = str(FIXTURES.parent / "remote" / "modelserver.py")  # OpenAI and Ollama APIs


def services(never_ready: bool = False) -> str:
    cmd = f"['{sys.executable}', '{PROGRAM}', --port, '{{port}}', --host, '{{host}}'"
    if never_ready:
        return ("  - {name: stuck, command: " + cmd + ", --never-ready],\n"
                "     readiness: {output: 'listening on'}, readiness_timeout: 5,\n"
                "     resources: {cpus: 0.05}}\n")
    ollama = f"['{sys.executable}', '{MODEL_SERVER}', '{{host}}', '{{port}}', --model, tiny, " \
             "--infer-ms, '30']"
    return ("  - {name: ollama, command: " + ollama + ", api: ollama, model: tiny,\n"
            "     resources: {cpus: 0.05}}\n"
            "  - {name: echo_out, command: " + cmd + "], replicas: 2, restarts: 2,\n"
            "     readiness: {output: 'listening on'}, resources: {cpus: 0.05}}\n"
            "  - {name: echo_http, command: " + cmd + ", --delay, '1'],\n"
            "     readiness: {http: /health}, resources: {cpus: 0.05}}\n")


def workflow(name: str, mode: str) -> str:
    return (f"name: {name}\n{ONE_NODE}services:\n{services()}"
            "driver:\n  function: drive_programs:main\n"
            f"  args: {{mode: {mode}}}\n")


def served_ids(run_dir) -> collections.Counter:
    """The programs' own ledger: every id any echo_out program answered, from its log."""
    counts: collections.Counter = collections.Counter()
    for log in (run_dir / "logs" / "services").glob("echo_out-*.log"):
        counts.update(re.findall(r"^served (\S+)$", log.read_text(), re.M))
    return counts


def test_program_services_ready_by_output_and_probe_and_a_killed_program_restarts(
        tmp_path, run_root):
    """Two runs of the same workflow at once on this node: each gets its own ports. In the
    light one, a program speaking Ollama's API answers the handle and the run's OpenAI API;
    in the full one, a program killed under load is restarted, and the client's ledger
    reconciles with the programs' own logs."""
    subs = {mode: submit_beside("services", f"{tmp_path.name}-{mode}",
                                workflow(f"prog-{mode}", mode), run_root)
            for mode in ("light", "full")}
    results = {}
    for mode, sub in subs.items():
        results[mode] = (sub, hpcray.wait(sub.run_dir, timeout=300))
        assert_nothing_left_of(sub.run_dir)
    outs = {}
    for mode, (sub, st) in results.items():
        assert st.state == "completed", hpcray.logs(sub.run_dir)
        outs[mode] = json.loads((sub.run_dir / "driver-result.json").read_text())
        assert len(outs[mode]["ports"]) == 2  # both replicas answered
        assert outs[mode]["probe_http"]["status"] == 200
    ports = {mode: set(out["ports"].values()) for mode, out in outs.items()}
    assert len(ports["full"] | ports["light"]) == 4, ports  # no port shared by two replicas
    metrics = json.loads((results["full"][0].run_dir / "metrics" / "services.json").read_text())
    for name in ("echo_out", "echo_http"):
        assert metrics[name]["bt"] and all(b["init"] > 0 and b["url"] for b in
                                           metrics[name]["bt"])

    ollama = outs["light"]["ollama"]  # a server speaking Ollama's API, with its timing
    assert ollama["text"] == "echo: cell dose" and ollama["pieces"] == ["echo: ", "cell ",
                                                                         "dose"]
    # the server reported about 30 ms of model time: that is the inference part, not the
    # whole forwarded call
    assert 0.03 <= ollama["inference_s"] < ollama["round_trip_s"], ollama
    assert ollama["embed"] == [[2.0, 1.0], [1.0, 1.0]]
    assert ollama["openai"] == [200, "echo: cell dose"]  # the run's OpenAI API serves it

    kill = outs["full"]["kill"]
    assert kill["restarted"] and kill["new_pid"] != kill["old_pid"], kill
    assert kill["threads_alive"] == 0
    outcomes = kill["outcomes"]
    timeouts = [rid for rid, o in outcomes.items() if o["outcome"] == "timeout"]
    assert not timeouts, timeouts  # a timeout is a lost request
    answered = {rid: o for rid, o in outcomes.items() if o["outcome"] == "answered"}
    failed = {rid: o for rid, o in outcomes.items() if o["outcome"] == "failed"}
    assert all(o["echo"] == rid for rid, o in answered.items())  # each its own answer
    assert all(o["cause"] for o in failed.values())
    served = served_ids(results["full"][0].run_dir)
    # both ends: every answered id was executed by a program exactly once, nothing was
    # executed twice, and nothing executed is unknown to the client
    assert {rid: served[rid] for rid in answered if served[rid] != 1} == {}
    assert [rid for rid, n in served.items() if n > 1] == []
    load_served = {rid for rid in served if rid.startswith("load-")}
    assert load_served <= set(outcomes), load_served - set(outcomes)
    # a failure may have been executed before its program died (then served once), never more
    assert set(answered) <= load_served
    assert len(answered) > 20


def test_a_program_that_never_becomes_ready_fails_the_run_with_its_output(tmp_path, run_root):
    text = (f"name: stuck\n{ONE_NODE}services:\n{services(never_ready=True)}"
            "driver:\n  function: drive_programs:main\n")
    sub, st = run_beside("services", tmp_path.name, text, run_root, timeout=200)
    assert st.state == "failed"
    error = st.error or ""
    assert "'stuck'" in error and "readiness_timeout" in error, error
    assert "waiting for something that never comes" in error, error  # the output's tail
    assert not (sub.run_dir / "driver-result.json").exists()


def test_a_program_service_in_a_podman_image_sees_the_run_directory(
        tmp_path, run_root, podman: Podman, monkeypatch):
    """The program runs in a locally built image (this machine's python, no hpcray, no Ray);
    the run and workflow directories are bound at their own paths."""
    for name, value in podman.env.items():  # this machine's podman settings (TESTING.md)
        monkeypatch.setenv(name, value)

    def text(image: str) -> str:
        return (f"name: box\n{ONE_NODE}services:\n"
                f"  - {{name: echo_box, command: [python3, '{PROGRAM}', --port, '{{port}}',\n"
                "       --host, '{host}', --touch, '{run_dir}/from-container.txt'],\n"
                "     readiness: {output: 'listening on'}, resources: {cpus: 0.05},\n"
                f"     container: {{runtime: podman, image: '{image}'}}}}\n"
                "driver:\n  function: drive_programs:box\n")

    missing = r"services\.0\.container\.image: .*not in podman.s local storage"
    with pytest.raises(SpecError, match=missing):
        submit_beside("services", f"{tmp_path.name}-missing", text("localhost/no-such:1"),
                      run_root)
    assert not run_root.exists() or not any(run_root.iterdir())  # nothing was submitted
    sub, st = run_beside("services", tmp_path.name, text(podman.image), run_root, timeout=240)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    out = json.loads((sub.run_dir / "driver-result.json").read_text())
    assert out["result"]["json"]["id"] == "box-1"
    seen = (sub.run_dir / "from-container.txt").read_text().split()
    assert seen[2] == "/usr/bin/python3"  # the image's python, not this venv's
    log = next((sub.run_dir / "logs" / "services").glob("echo_box-*.log")).read_text()
    assert f"in the podman image {podman.image}" in log  # the program's line, not podman's
    # the stop went through podman: no container is left in its store, running or not
    left = subprocess.run(["podman", "ps", "-a", "--format", "{{.ID}} {{.Status}}"],
                          env={**os.environ, **podman.env}, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()
    assert left == "", left
