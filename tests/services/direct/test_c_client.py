"""The shipped C client (examples/c/hpcray_call.c), built with the system compiler and libzmq,
against a real replica socket with PLAIN authentication."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)


def test_c_client_calls_a_service(c_client, serve_model, tmp_path):
    token = tmp_path / "token"
    token.write_text("c-secret\n")
    token.chmod(0o600)
    _, address = serve_model("r1", token=b"c-secret")
    out = run(c_client, address, str(token), "echo", '{"dose": 2.5, "genes": ["TP53"]}', "200")
    assert out.returncode == 0, out.stderr
    lines = dict(part.split("=", 1) for line in out.stdout.splitlines()
                 for part in (line.split(" ") if not line.startswith("payload=") else [line]))
    assert lines["status"] == "o" and lines["replica"] == "r1"
    assert lines["payload"] == '{"dose":2.5,"genes":["TP53"]}'  # the service's JSON encoding
    assert float(lines["before_us"]) > 0 and float(lines["inference_us"]) > 0
    assert lines["requests"] == "200" and float(lines["p50_us"]) > 0


def test_c_client_reports_handler_errors_and_refusals(c_client, serve_model, tmp_path):
    _, address = serve_model("r1")
    failed = run(c_client, address, "-", "fail", "3")
    assert failed.returncode == 3 and "status=e" in failed.stdout
    assert "RuntimeError: model failed on 3" in failed.stdout
    refused = run(c_client, address, "-", "nothing")
    assert refused.returncode == 3 and "status=r" in refused.stdout
    assert "no method 'nothing'" in refused.stdout


def test_c_client_reads_a_stream_piece_by_piece(c_client, serve_model):
    _, address = serve_model("r1")
    out = run(c_client, address, "-", "count", "4", "stream")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    pieces = [line for line in lines if line.startswith("piece ")]
    assert [p.split(": ", 1)[1] for p in pieces] == [f'{{"i":{i}}}' for i in range(4)]
    arrived = [float(p.split("at_us=")[1].split(":")[0]) for p in pieces]
    assert arrived == sorted(arrived) and arrived[0] < arrived[-1]  # one at a time
    assert "status=o replica=r1 pieces=4" in out.stdout and "payload=null" in out.stdout
    failed = run(c_client, address, "-", "boom", "5", "stream")
    assert failed.returncode == 3 and "piece 1 at_us=" in failed.stdout
    assert "status=e" in failed.stdout and "stream failed on 5" in failed.stdout
