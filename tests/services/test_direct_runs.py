"""The direct path in a real run: `hpcray submit` starts Ray, Serve and the replicas with the
run's token; client programs connect as users' programs do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hpcray
from hpcray.rundir import read_json
from tests.conftest import FIXTURES, ray_processes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SERVICES = """\
  - {name: echo4, deployment: noop, replicas: 2, resources: {cpus: 0.05}}
  - {name: victim, deployment: 'userclasses:Sleepy', replicas: 2, resources: {cpus: 0.05},
     health_check_period: 1, health_check_timeout: 5}
  - {name: grow, deployment: noop, replicas: 1, resources: {cpus: 0.05}}
  - {name: viaserve, deployment: noop, transport: serve, resources: {cpus: 0.05}}
"""


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One run, no driver (up until cancelled), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("runs")
    path = FIXTURES / "services" / "direct-live.yaml"
    path.write_text("name: direct\nallocation: {nodes: 1, walltime: 20m}\n"
                    "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                    f"services:\n{SERVICES}")
    sub = None
    try:
        sub = hpcray.submit(path, run_root=root)
        assert wait_until(lambda: "services_ready" in hpcray.status(sub.run_dir).times
                          or hpcray.status(sub.run_dir).finished, 240), hpcray.logs(sub.run_dir)
        assert hpcray.status(sub.run_dir).state == "running", hpcray.logs(sub.run_dir)
        yield sub.run_dir
    finally:
        path.unlink(missing_ok=True)
        if sub is not None:
            cluster = read_json(sub.run_dir / "run.json").get("cluster_id")
            hpcray.cancel(sub.run_dir, wait_s=120)
            assert wait_until(lambda: not ray_processes(cluster), 30), "processes left behind"


def client(mode: str, run_dir) -> dict:
    out = subprocess.run([sys.executable, str(FIXTURES / "services" / "direct_clients.py"),
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
    assert result["task"] == ["direct", "from a task", True]


@pytest.mark.faults
def test_sigkill_of_a_replica_mid_load(live_run):
    r = client("kill", live_run)
    # every request answered or failed explicitly, with the lost replica named
    assert r["ok"] + r["failed"] == r["sent"] == 480, r
    assert all(r["victim"] in f for f in r["failures"]), r["failures"]
    survivor = (set(r["first"]) - {r["victim"]}).pop()
    assert r["after_kill_by"].get(survivor, 0) > 0
    assert r["removed_after"] is not None  # the handle dropped it
    assert r["new"], "Serve's replacement never reached the handle"
    assert set(r["new"]) & set(r["served_by_new"])  # and it takes work


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
