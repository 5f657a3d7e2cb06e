"""One real run shared by the tests of its data paths: `hpcray submit` starts Ray, Serve and
the replicas with the run's token; client programs connect as users' programs do. The direct
path, the Serve path (a replica SIGKILLed under load) and the HTTP API (bearer token, fuzzed
against its OpenAPI description)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcray.rundir import read_json
from hpcray.services.ledger import read_executed
from tests.conftest import FIXTURES, up_until_cancelled

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SERVICES = """\
  - {name: echo4, deployment: noop, replicas: 2, resources: {cpus: 0.05}}
  - {name: victim, deployment: 'userclasses:Sleepy', replicas: 2, resources: {cpus: 0.05},
     health_check_period: 1, health_check_timeout: 5}
  - {name: grow, deployment: noop, replicas: 1, resources: {cpus: 0.05}}
  - {name: viaserve, deployment: noop, transport: serve, resources: {cpus: 0.05}}
  - {name: victimserve, deployment: 'userclasses:Sleepy', replicas: 2, transport: serve,
     resources: {cpus: 0.05}, health_check_period: 1, health_check_timeout: 5}
"""


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One run, no driver (up until cancelled), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("runs")
    path = FIXTURES / "services" / "direct-live.yaml"
    path.write_text("name: direct\nallocation: {nodes: 1, walltime: 20m, "
                    "env: {HPCRAY_LEDGER: '1'}}\n"  # replicas keep request ledgers
                    "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                    "endpoints: {token: true}\n"
                    f"services:\n{SERVICES}")
    with up_until_cancelled(path, root) as run_dir:
        yield run_dir


def client(mode: str, run_dir) -> dict:
    out = subprocess.run([sys.executable, str(FIXTURES / "services" / "live_clients.py"),
                          mode, str(run_dir)], capture_output=True, text=True, timeout=400,
                         cwd=FIXTURES / "services")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_endpoints_publish_each_replica_socket(live_run):
    endpoints = read_json(live_run / "endpoints.json")["services"]
    head = read_json(live_run / "head.json")
    direct = endpoints["echo4"]["direct"]
    assert len(direct["replicas"]) == 2
    for replica in direct["replicas"]:
        # bound on the node's own address (the one Ray uses), never 0.0.0.0
        assert replica["address"].startswith(f"tcp://{head['ip']}:")
    plan = read_json(live_run / "plan.json")
    assert direct["auth"] == {"mechanism": "PLAIN", "username": "hpcray",
                              "password_file": plan["token_path"]}
    assert "direct" not in endpoints["viaserve"]
    bt = read_json(live_run / "metrics" / "services.json")["echo4"]["bt"]
    assert len(bt) == 2 and all(b["publish"] >= 0 for b in bt)


def test_sixteen_client_processes_lose_and_duplicate_nothing(live_run):
    result = client("concurrency", live_run)
    assert result["transport"] == "direct" and len(result["replicas"]) == 2
    assert [c["client"] for c in result["clients"]] == list(range(16))
    for c in result["clients"]:
        assert c["n"] == c["unique"] == 1024 and c["wrong"] == 0, c
    used = {r for c in result["clients"] for r in c["replicas"]}
    assert used == set(result["replicas"])  # both replicas took work
    # against the replicas' ledgers: each answered id executed once, by the replica that
    # answered it (a reply without an execution, or a request run twice, would show here)
    executed = read_executed(live_run, "echo4")
    answered = [(rid, replica) for c in result["clients"] for rid, replica in c["answered"]]
    assert len(answered) == 16 * 1024
    wrong_ledger = [(rid, replica, executed.get(rid)) for rid, replica in answered
                    if executed.get(rid) != [(replica, "ok")]]
    assert wrong_ledger == [], wrong_ledger[:5]
    assert result["task"] == ["direct", "from a task", True]


def _reconciled(r: dict) -> dict:
    """The two ledgers agree: every id answered was executed by its answerer, nothing
    answered twice, no id executed twice except one resent after the victim died, no
    timeout, no client thread left hanging."""
    ledger = r["ledger"]
    assert ledger["problems"] == [] and ledger["lost"] == 0 and r["threads_hung"] == 0, r
    assert ledger["sent"] == 480, ledger
    assert r["victim_executed"] >= 20  # killed under load, after the gate
    assert r["victim"] not in r["after_kill_by"], r  # nothing sent after the kill reached it
    return ledger


@pytest.mark.faults
def test_sigkill_of_a_replica_mid_load(live_run):
    r = client("kill", live_run)
    ledger = _reconciled(r)
    # the direct client resends what the victim held; a failure must be explicit and name it
    assert set(ledger["failed"]) <= {"replica lost"}, ledger
    assert all(r["victim"] in f for f in r["failures"]), r["failures"]
    survivor = (set(r["first"]) - {r["victim"]}).pop()
    assert r["after_kill_by"].get(survivor, 0) > 0
    assert r["removed_after"] is not None  # the handle dropped it
    assert r["new"], "Serve's replacement never reached the handle"
    assert set(r["new"]) & set(r["served_by_new"])  # and it takes work
    print(f"direct path ledger: {ledger}")  # quoted in docs/reliability.md


def test_a_replica_added_under_load_receives_work(live_run):
    r = client("scale", live_run)
    assert len(r["before"]) == 1 and len(r["after"]) == 2
    assert r["before"][0] in r["after"]  # scaling did not restart the existing replica
    new = (set(r["after"]) - set(r["before"])).pop()
    assert r["seen"].get(new, 0) > 0, r


def test_c_client_with_endpoints_json(live_run, c_client):
    direct = read_json(live_run / "endpoints.json")["services"]["echo4"]["direct"]
    address = direct["replicas"][0]["address"]
    out = subprocess.run([str(c_client), address, direct["auth"]["password_file"], "echo",
                          '{"cells": 96}', "50"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"replica={direct['replicas'][0]['replica']}" in out.stdout
    assert 'payload={"cells":96}' in out.stdout


@pytest.mark.faults
def test_sigkill_of_a_serve_path_replica_mid_load(live_run):
    r = client("kill_serve", live_run)
    ledger = _reconciled(r)
    # Serve does not resend: what the victim held fails as ReplicaLost naming the request
    assert set(ledger["failed"]) <= {"replica lost"}, ledger
    assert all("service 'victimserve'" in f and "request " in f for f in r["failures"]), r
    survivor = (set(r["first"]) - {r["victim"]}).pop()
    assert r["after_kill_by"].get(survivor, 0) > 0, r
    assert r["new"], "Serve's replacement never took a request"
    print(f"serve path ledger: {ledger}, replacement serving after "
          f"{r['replaced_after']:.1f} s")  # quoted in docs/reliability.md


def _http(url: str, token: str | None = None, body: dict | None = None):
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_http_api_needs_the_run_token_and_listens_on_the_head_only(live_run):
    import psutil

    endpoints = read_json(live_run / "endpoints.json")
    token_file = Path(endpoints["http_auth"]["token_file"])
    assert endpoints["http_auth"]["scheme"] == "Bearer"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    service_url = endpoints["services"]["viaserve"]["http"]
    models_url = endpoints["openai"] + "/models"
    call = {"method": "echo", "payload": {"x": 1}}
    for presented in (None, "wrong", token + "x", ""):
        status, body = _http(service_url, presented, call)
        assert status == 401 and body["error"]["type"] == "authentication_error", body
        assert _http(models_url, presented)[0] == 401
    # Serve's proxy checks the token before anything else: its own routes, and a malformed
    # body gets the 401 (not a 422 or 400 about the body, which is never read)
    import urllib.error
    import urllib.request

    root = endpoints["openai"].removesuffix("/v1")
    refusal = _http(service_url)[1]
    for path in ("/-/routes", "/-/healthz"):
        for presented in (None, "wrong", token + "x", ""):
            status, body = _http(root + path, presented)
            assert (status, body) == (401, refusal), (path, presented, body)
    for url in (endpoints["openai"] + "/chat/completions", service_url):
        for presented in (None, "wrong"):
            headers = {"Content-Type": "application/json"}
            if presented is not None:
                headers["Authorization"] = f"Bearer {presented}"
            malformed = urllib.request.Request(url, data=b'{"model": [', headers=headers)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(malformed, timeout=30)
            assert refused.value.code == 401, (url, refused.value.code)
            assert json.loads(refused.value.read()) == refusal
    status, body = _http(root + "/-/routes", token)
    assert status == 200 and "/v1" in body, body
    assert _http(service_url, token, call)[1]["result"] == {"x": 1}
    status, body = _http(models_url, token)
    assert status == 200 and "victimserve" in [m["id"] for m in body["data"]]
    status, body = _http(endpoints["openai"] + "/completions", token,
                         {"model": "viaserve", "prompt": "hi"})
    assert status == 200 and body["choices"][0]["text"] == "ok", body
    # the proxy listens on the head's address, not on every interface
    head = read_json(live_run / "head.json")
    port = head["serve_http_port"]
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {head["ip"]}, listening
    # the token is in its file and nowhere else of the run (logs, state, scripts)
    holders = [f for f in live_run.rglob("*") if f.is_file() and f != token_file
               and token.encode() in f.read_bytes()]
    assert holders == []


@pytest.mark.timeout(400)
def test_openai_api_fuzzed_against_its_openapi_description(live_run, tmp_path):
    """schemathesis generates requests from /v1/openapi.json (valid and invalid); none may
    get a 5xx, and the API still answers afterwards."""
    endpoints = read_json(live_run / "endpoints.json")
    token = Path(endpoints["http_auth"]["token_file"]).read_text().strip()
    config = tmp_path / "schemathesis.toml"
    # the token reaches schemathesis through its environment, not its command line
    config.write_text('headers = { Authorization = "Bearer ${HPCRAY_TEST_HTTP_TOKEN}" }\n')
    out = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "--no-color", "--config-file",
         str(config), "run",
         endpoints["openai"] + "/openapi.json", "--url", endpoints["openai"],
         "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "7",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=360, cwd=tmp_path,
        env={**os.environ, "HPCRAY_TEST_HTTP_TOKEN": token})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    import re

    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert cases and int(cases.group(2)) >= 100, out.stdout[-3000:]  # it really sent them
    assert "404" not in out.stdout, out.stdout[-3000:]  # requests reached the services
    print(f"schemathesis: {cases.group(0)}")  # shown with -s; docs/reliability.md quotes it
    assert not re.search(r"\d+ failed", out.stdout), out.stdout[-3000:]
    status, body = _http(endpoints["openai"] + "/models", token)
    assert status == 200 and body["data"]


def _prometheus_query(api: str, query: str) -> list[dict]:
    """One instant query of Prometheus' HTTP API; its result vector."""
    import urllib.parse
    import urllib.request

    url = f"{api}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.timeout(150)
def test_debians_prometheus_scrapes_the_run_under_load(live_run, tmp_path, monkeypatch):
    """Debian's real `prometheus` scrapes the run's metrics endpoint (with the run's bearer
    token, as a site would) while a client keeps echo4 busy; its query API then returns the
    request rate, the latency histograms (replica and client side) and the node metrics;
    Ray's own exporters are discovered through the endpoint's /ray-targets."""
    import shutil
    import socket
    import threading
    import urllib.error
    import urllib.request

    import psutil

    import hpcray
    from hpcray.metrics import recorder
    from hpcray.services.direct.client import DirectClient
    from tests.conftest import wait_until

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("Debian's prometheus is not installed (tests/slurm/install.sh installs it)")
    endpoints = read_json(live_run / "endpoints.json")
    head = read_json(live_run / "head.json")
    url, token_file = endpoints["metrics"], endpoints["http_auth"]["token_file"]
    assert url == head["metrics_url"] and url.startswith(f"http://{head['ip']}:")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {head["ip"]}, listening  # the head's address only
    with pytest.raises(urllib.error.HTTPError) as refused:  # the run's token is required
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        api_port = s.getsockname()[1]
    config = tmp_path / "prometheus.yml"  # what docs/metrics.md tells a site to write
    config.write_text(f"""\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: hpcray
    metrics_path: /metrics
    authorization: {{credentials_file: {token_file}}}
    static_configs: [{{targets: ["{url.split('/')[2]}"], labels: {{run: direct}}}}]
  - job_name: ray
    http_sd_configs:
      - url: {url.replace('/metrics', '/ray-targets')}
        refresh_interval: 5s
        authorization: {{type: Bearer, credentials_file: {token_file}}}
""")
    # a client in the run, as a driver: its communication part is recorded too
    monkeypatch.setenv("HPCRAY_RUN_DIR", str(live_run))
    monkeypatch.setattr(recorder, "_client_metrics", None)
    direct = endpoints["services"]["echo4"]["direct"]
    client = DirectClient("echo4", addresses={r["replica"]: r["address"]
                                              for r in direct["replicas"]},
                          token=Path(direct["auth"]["password_file"]).read_bytes().strip())
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        while not stop.is_set():
            client.call("echo", {"n": sent[0]})
            sent[0] += 1

    loader = threading.Thread(target=load, daemon=True)
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{api_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))  # noqa: SIM115
    api = f"http://127.0.0.1:{api_port}"
    try:
        loader.start()

        def query(q: str) -> list[dict]:
            try:
                return _prometheus_query(api, q)
            except (OSError, urllib.error.URLError):
                return []  # not listening yet

        def log() -> str:
            return (tmp_path / "prometheus.log").read_text()[-3000:]

        assert wait_until(lambda: [r for r in query('up{job="hpcray"}')
                                   if r["value"][1] == "1"], 30), log()
        rate = 'sum(rate(hpcray_requests_total{service="echo4"}[5s]))'
        assert wait_until(lambda: [r for r in query(rate) if float(r["value"][1]) > 10], 30), \
            (query(rate), log())
        # the histograms: every bucket of both replicas, and the split's p50 from them
        buckets = query('hpcray_inference_seconds_bucket{service="echo4"}')
        assert {r["metric"]["replica"] for r in buckets} == \
            {r["replica"] for r in direct["replicas"]}
        assert {r["metric"]["le"] for r in buckets} >= {"2.5e-05", "0.001", "60.0", "+Inf"}
        for part in ("service", "inference", "communication"):
            q = (f'histogram_quantile(0.5, sum by (le) '
                 f'(rate(hpcray_{part}_seconds_bucket{{service="echo4"}}[10s])))')
            assert wait_until(lambda q=q: [r for r in query(q)
                                           if 0 < float(r["value"][1]) < 1], 20), \
                (part, query(q))
        assert query('hpcray_requests_in_flight{service="echo4"}')
        # the Serve path's replicas record too (HTTP API, through Serve's proxy)
        token = Path(token_file).read_text().strip()
        serve_count = 'sum(hpcray_inference_seconds_count{service="viaserve"})'
        before = sum(float(r["value"][1]) for r in query(serve_count))
        for i in range(20):
            assert _http(endpoints["services"]["viaserve"]["http"], token,
                         {"method": "echo", "payload": i})[0] == 200
        assert wait_until(lambda: [r for r in query(serve_count)
                                   if float(r["value"][1]) >= before + 20], 20), \
            (before, query(serve_count))
        assert [r for r in query('hpcray_service_replicas{service="echo4"}')
                if r["value"][1] == "2"]
        nodes = query("hpcray_node_memory_total_bytes")
        assert [r["metric"]["node"] for r in nodes] == [head["node"]], nodes
        assert float(nodes[0]["value"][1]) == psutil.virtual_memory().total
        assert query("hpcray_node_cpu_percent")
        # Ray's own exporter on every node, found through /ray-targets
        assert wait_until(lambda: [r for r in query('up{job="ray"}')
                                   if r["value"][1] == "1"], 30), (query('up{job="ray"}'), log())
        assert query('count({job="ray", __name__=~"ray_.+"})')
        # every query of the shipped Grafana dashboard answers; all but the GPU and stage
        # panels with data (no GPU here, no stages in this run)
        from tests.metrics.test_dashboard import dashboard_queries

        empty = sorted({title for title, q in dashboard_queries("10s") if not query(q)})
        assert empty == ["GPU busy and memory", "Stage tasks by state"], empty
        # `hpcray status` shows the same numbers
        st = hpcray.status(live_run)
        echo = next(s for s in st.services if s.name == "echo4")
        assert echo.served > 0 and echo.request_rate > 0 and st.metrics_url == url
        assert set(echo.p50_ms) == {"communication", "service", "inference"}
        print(f"prometheus: {sent[0]} requests sent; rate {query(rate)[0]['value'][1]}/s")
    finally:
        stop.set()
        loader.join(timeout=10)
        client.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
