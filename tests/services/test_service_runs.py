"""Services in real runs: real Ray, real Serve, started by `hpcray up` before the driver."""

from __future__ import annotations

import json

import pytest

import hpcray
from hpcray.rundir import read_json
from tests.conftest import FIXTURES, ray_processes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DRIVER = (f"driver:\n  function: drive_services:main\n  cwd: {FIXTURES / 'services'}\n"
          "  args:\n    services: {{{services}}}\n")


def run_workflow(tmp_path, run_root, services: str, driver_services: str | None = None):
    text = ("name: svc\nallocation: {nodes: 1, walltime: 10m}\n"
            "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
            f"services:\n{services}")
    if driver_services is not None:
        text += DRIVER.format(services=driver_services)
    path = FIXTURES / "services" / f"{tmp_path.name}.yaml"  # the workflow dir holds user code
    path.write_text(text)
    try:
        sub = hpcray.submit(path, run_root=run_root)
        st = hpcray.wait(sub.run_dir, timeout=240)
    finally:
        path.unlink()
    cluster = read_json(sub.run_dir / "run.json").get("cluster_id")
    assert wait_until(lambda: not ray_processes(cluster), 30), "processes left behind"
    return sub, st


def test_noop_replicas_start_in_parallel_and_are_all_used(tmp_path, run_root):
    services = "".join(f"  - {{name: noop{n}, deployment: noop, replicas: {n}, "
                       "resources: {cpus: 0.05}}\n" for n in (1, 2, 4))
    sub, st = run_workflow(tmp_path, run_root, services, "noop1: 1, noop2: 2, noop4: 4")
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    metrics = json.loads((sub.run_dir / "metrics" / "services.json").read_text())
    for n in (1, 2, 4):
        name = f"noop{n}"
        assert len(result[name]["replicas"]) == n  # every replica served requests
        bt = metrics[name]["bt"]
        assert sorted(b["replica"] for b in bt) == sorted(result[name]["replicas"])
        for b in bt:
            assert b["launch"] > 0 and b["init"] >= 0 and b["publish"] >= 0
            assert b["node"] == st.nodes[0].name
    # one level, one deploy call: all three services were asked for at the same moment
    assert len({metrics[f"noop{n}"]["deploy_at"] for n in (1, 2, 4)}) == 1
    info = read_json(sub.run_dir / "run.json")
    assert info["times"]["services_ready"] <= info["times"]["driver_start"]
    assert {s["state"] for s in info["services"].values()} == {"stopped"}


def test_constructor_error_fails_fast_and_the_driver_never_starts(tmp_path, run_root):
    services = ("  - {name: good, deployment: noop, resources: {cpus: 0.05}}\n"
                "  - {name: model, deployment: 'userclasses:Broken', args: {size: 7},\n"
                "     resources: {cpus: 0.05}, readiness_timeout: 120}\n")
    sub, st = run_workflow(tmp_path, run_root, services, "good: 1")
    assert st.state == "failed"
    assert "service 'model' failed to start" in st.error
    assert "checkpoint of size 7 is corrupt" in st.error  # the constructor's own traceback
    assert "driver_start" not in st.times


def test_resources_no_node_has(tmp_path, run_root):
    services = "  - {name: big, deployment: noop, resources: {cpus: 64}}\n"
    sub, st = run_workflow(tmp_path, run_root, services, "big: 1")
    assert st.state == "failed"
    assert "service 'big' cannot be placed: one replica needs {'CPU': 64" in st.error


def test_bad_arguments_fail_before_deploying(tmp_path, run_root):
    services = "  - {name: c, deployment: 'userclasses:Counter', args: {begin: 1}}\n"
    sub, st = run_workflow(tmp_path, run_root, services, "c: 1")
    assert st.state == "failed" and "its parameters: start" in st.error
