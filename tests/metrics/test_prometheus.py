"""The run's Prometheus endpoint without a cluster: a real direct-path replica and client
record into a run dir, the exposition text is parsed by prometheus_client's own parser, and
the HTTP server is asked as Prometheus asks it (token, service discovery)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcray.errors import ServiceRequestError
from hpcray.metrics import recorder
from hpcray.metrics.prometheus import MetricsServer, collect, render, service_summary
from hpcray.metrics.recorder import BOUNDS_S, ClientMetrics, ReplicaStats, merge, quantile
from hpcray.metrics.usage import RequestCounter
from hpcray.rundir import write_json_atomic

pytestmark = pytest.mark.timeout(60)


def families(text: str) -> dict[str, list]:
    """name -> samples, through the official parser (raises on a malformed line)."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def wait_until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s")


def test_histogram_buckets_and_quantile():
    h = recorder.ClientStats()
    for v in (20e-6, 25e-6, 30e-6, 0.2, 100.0):  # on a bound counts in that bucket (le)
        h.observe(v, (0, 0, 0))
    h.observe(1.0, None)  # no timing: no split, not counted
    split = recorder.ClientStats()
    split.observe(1.0, (100_000_000, 200_000_000, 300_000_000))  # the replica's 0.6 s
    assert split.snapshot()["sum"] == pytest.approx(0.4)
    snap = h.snapshot()
    assert snap["count"] == 5 and snap["counts"][0] == 2 and snap["counts"][1] == 1
    assert snap["counts"][-1] == 1  # above every bound: only in +Inf
    assert snap["sum"] == pytest.approx(100.20007500)
    assert len(snap["counts"]) == len(BOUNDS_S) + 1
    merged = merge([snap, snap])
    assert merged["count"] == 10 and merged["counts"][0] == 4
    # rank 5 of 10: 4 at or below 25 us, then halfway through the (25, 50] us bucket's two
    assert quantile(merged, 0.5) == pytest.approx(37.5e-6)
    assert quantile({"counts": [], "count": 0}, 0.5) is None


@pytest.fixture
def served_run(tmp_path, monkeypatch):
    """A run dir with one real direct-path replica (its RequestCounter writing samples) and
    one real client process-side recorder, after 200 good requests and 3 failed ones."""
    from hpcray.services.direct.client import DirectClient
    from hpcray.services.direct.server import DirectServer

    run = tmp_path / "run"
    (run / "nodes").mkdir(parents=True)
    write_json_atomic(run / "run.json", {"run_id": "r1", "state": "running", "services": {
        "echo": {"state": "ready"}}, "stages": {"prep": {
            "state": "running", "total": 10, "done": 4, "failed": 1, "running": 2,
            "retried": 3}}})
    write_json_atomic(run / "resolved.json", {"workflow": {"services": [
        {"name": "echo", "replicas": 2}]}})
    write_json_atomic(run / "nodes" / "n0.json", {"state": "ray_started", "ip": "127.0.0.1",
                                                  "port_base": 20000, "usage": {
        "cpu_percent": 12.5, "cpus": 2, "memory_used": 1e9, "memory_total": 4e9, "load1": 0.5,
        "gpus": [{"index": 0, "vendor": "nvidia", "util_percent": 40.0,
                  "memory_used": 2**30, "memory_total": 2**34}]}})

    def method(name: str):
        if name == "boom":
            def boom(_):
                raise ValueError("no")
            return boom
        if name == "echo":
            return lambda payload: payload
        raise ServiceRequestError(f"no method {name}", field="method")

    from hpcray.metrics import usage

    monkeypatch.setattr(usage, "SAMPLE_S", 0.2)  # samples written 10x as often: a faster test
    monkeypatch.setattr(recorder, "SAMPLE_S", 0.2)
    stats = ReplicaStats()
    server = DirectServer(method, "rep1", {}, host="127.0.0.1", stats=stats)
    address = server.start()
    counter = RequestCounter(str(run), "echo", "rep1", "n0", served=lambda: server.served,
                             stats=stats, in_flight=lambda: server.in_flight)
    monkeypatch.setattr(recorder, "_client_metrics", ClientMetrics(run))
    monkeypatch.setenv("HPCRAY_RUN_DIR", str(run))
    client = DirectClient("echo", addresses={"rep1": address}, token=b"")
    try:
        for i in range(200):
            assert client.call("echo", i).payload == i
        for _ in range(3):
            with pytest.raises(Exception, match="no"):
                client.call("boom")
        recorder._client_metrics.write()
        wait_until(lambda: (collect(run)["services"]["echo"]["replicas"].get("rep1") or {})
                   .get("service_seconds", {}).get("count") == 200)
        yield run, client
    finally:
        client.close()
        counter.stop()
        server.stop()


def test_exposition_parses_and_counts_what_was_served(served_run):
    run, _ = served_run
    snapshot = collect(run)
    parsed = families(render(snapshot))
    labels = {"service": "echo", "replica": "rep1", "node": "n0"}

    def value(name, **want):
        found = [s.value for s in parsed[name] if all(s.labels.get(k) == v
                                                       for k, v in want.items())]
        assert len(found) == 1, (name, want, parsed.get(name))
        return found[0]

    assert value("hpcray_requests", **labels) == 200  # counters lose _total in the parser
    assert value("hpcray_request_errors", **labels) == 3
    assert value("hpcray_requests_in_flight", **labels) == 0
    assert value("hpcray_service_replicas", service="echo") == 1
    assert value("hpcray_service_replicas_desired", service="echo") == 2
    for name in ("hpcray_service_seconds", "hpcray_inference_seconds"):
        buckets = [s for s in parsed[name] if s.name == f"{name}_bucket"]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), "buckets are cumulative"
        assert buckets[-1].labels["le"] == "+Inf" and counts[-1] == 200
        assert len(buckets) == len(BOUNDS_S) + 1
        total = [s.value for s in parsed[name] if s.name == f"{name}_count"]
        assert total == [200]
    comm = [s for s in parsed["hpcray_communication_seconds"]
            if s.name == "hpcray_communication_seconds_count"]
    assert len(comm) == 1 and comm[0].value == 200 and comm[0].labels["service"] == "echo"
    assert value("hpcray_node_cpu_percent", node="n0") == 12.5
    assert value("hpcray_gpu_utilization_percent", node="n0", gpu="0", vendor="nvidia") == 40
    tasks = {s.labels["state"]: s.value for s in parsed["hpcray_stage_tasks"]}
    assert tasks == {"pending": 3, "running": 2, "done": 4, "failed": 1}
    assert value("hpcray_stage_retries", stage="prep") == 3
    summary = service_summary(snapshot["services"]["echo"])
    assert summary["served"] == 200 and summary["errors"] == 3
    assert all(v is not None and 0 < v < 1 for v in summary["p50_s"].values())


def test_a_paused_run_records_nothing_more(served_run):
    """The benchmark's off arm: <run>/metrics/paused stops the histograms within a sample;
    the served count (hpcray status' rate) goes on."""
    run, client = served_run
    (run / "metrics" / "paused").write_text("")
    wait_until(lambda: collect(run)["services"]["echo"]["replicas"]["rep1"]
               .get("recording") is False)
    wait_until(lambda: recorder._client_metrics.on is False)
    for i in range(50):
        client.call("echo", i)
    wait_until(lambda: collect(run)["services"]["echo"]["replicas"]["rep1"]["served"] == 250)
    sample = collect(run)["services"]["echo"]["replicas"]["rep1"]
    assert sample["service_seconds"]["count"] == 200
    assert recorder._client_metrics.snapshot()["services"]["echo"][
        "communication_seconds"]["count"] == 200


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_server_wants_the_token_and_discovers_ray_exporters(served_run):
    served_run, _ = served_run
    token_file = served_run / "secrets" / "http-token"
    server = MetricsServer(served_run, "127.0.0.1", 0, ray_metrics_offset=8,
                           token_file=token_file, token_required=True).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert _get(server.url)[0] == 401  # the token file is not there yet: nothing served
        token_file.parent.mkdir()
        token_file.write_text("s3cret\n")
        for wrong in (None, "", "s3cre", "s3cretx"):
            assert _get(server.url, wrong)[0] == 401
        code, body = _get(server.url, "s3cret")
        assert code == 200 and b"hpcray_requests_total" in body
        assert b"s3cret" not in body
        code, body = _get(server.url.replace("/metrics", "/ray-targets"), "s3cret")
        assert code == 200
        assert json.loads(body) == [{"targets": ["127.0.0.1:20008"],
                                     "labels": {"node": "n0", "hpcray_component": "ray"}}]
        assert _get(server.url.replace("/metrics", "/other"), "s3cret")[0] == 404
    finally:
        server.stop()


def test_label_values_are_escaped():
    snapshot = {"state": "running", "nodes": {}, "stages": {}, "services": {
        'we"ird\\name\n': {"state": "ready", "replicas": {}, "communication_seconds": {}}}}
    parsed = families(render(snapshot))
    assert parsed["hpcray_service_state"][0].labels["service"] == 'we"ird\\name\n'


def test_metrics_port_is_in_hpcrays_own_offsets():
    from hpcray.runtime.ports import (
        PROGRAM_OFFSETS,
        RAY_PORT_VARIABLES,
        SERVE_HTTP_OFFSET,
        SERVICE_PORTS,
        PortBlock,
    )

    block = PortBlock(30000)
    assert block.metrics_port == 30013 and block.ray_metrics_port == 30008
    taken = {*SERVICE_PORTS.values(), *RAY_PORT_VARIABLES.values(), SERVE_HTTP_OFFSET,
             *PROGRAM_OFFSETS}
    assert 13 not in taken


def test_docs_list_every_metric():
    from hpcray.metrics.prometheus import METRICS

    text = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    assert [m for m in METRICS if f"`{m}`" not in text] == []


def test_in_flight_counts_requests_held_by_the_replica():
    """Queue depth: requests received and not answered (a slow handler on the worker, the
    rest waiting), back to 0 when all are answered."""
    import threading

    from hpcray.services.direct.client import DirectClient
    from hpcray.services.direct.server import DirectServer

    release = threading.Event()

    def slow(_):
        release.wait(10)
        return "done"

    stats = ReplicaStats()
    server = DirectServer(lambda name: slow, "rep1", {}, host="127.0.0.1", stats=stats)
    address = server.start()
    client = DirectClient("slow", addresses={"rep1": address}, token=b"")
    done: list = []
    caller = threading.Thread(target=lambda: done.extend(
        client.call_many("slow", list(range(6)), window=6, timeout=30)))
    try:
        server._handler("slow")[2] = 1e9  # known slow: served on the worker thread
        caller.start()
        wait_until(lambda: server.in_flight == 6)
        release.set()
        caller.join(timeout=20)
        assert len(done) == 6 and server.in_flight == 0
        assert stats.snapshot()["inference_seconds"]["count"] == 6
    finally:
        release.set()
        client.close()
        server.stop()
