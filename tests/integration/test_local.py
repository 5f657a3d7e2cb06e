"""The local scheduler end to end: a real Ray cluster on this machine, as in an allocation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import hpcray
from hpcray.rundir import read_json
from tests.conftest import REPO, ray_processes, wait_until
from tests.test_state import assert_states_are_members

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

EXAMPLES = REPO / "examples"


def workflow(tmp_path: Path, body: str, name: str = "wf") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return path


@pytest.fixture
def cleanup():
    """Cancel whatever a test left running, even when it fails."""
    runs: list[Path] = []
    yield runs
    for run in runs:
        st = hpcray.status(run)
        if not st.finished:
            hpcray.cancel(run, wait_s=60)
        cluster = read_json(run / "run.json", {}).get("cluster_id")
        if cluster:
            for proc in ray_processes(cluster):
                proc.kill()
    for run in runs:  # after the cleanup above, which must happen even if this fails
        assert_states_are_members(run)


def assert_nothing_left(run_dir: Path) -> None:
    data = read_json(run_dir / "run.json")
    cluster = data["cluster_id"]
    assert wait_until(lambda: not ray_processes(cluster), 15), (
        f"processes of {cluster} left: {[p.cmdline()[:3] for p in ray_processes(cluster)]}")
    plan = read_json(run_dir / "plan.json")
    for i, _ in enumerate(plan["nodes"]):
        # the short per-node temp dir is removed on a clean exit
        assert not Path(f"{plan['temp_root']}/hr{cluster.split('-')[2]}n{i}").exists()


def test_quickstart_example_runs_locally(run_root, cleanup):
    sub = hpcray.submit(EXAMPLES / "quickstart.yaml", run_root=run_root)
    cleanup.append(sub.run_dir)
    st = hpcray.wait(sub.run_dir, timeout=180)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    assert len(result["nodes"]) == 1
    assert len(result["tasks"]) == 4
    times = st.times
    order = ["submitted", "job_started", "launched", "head_up", "all_joined", "driver_start",
             "driver_end", "teardown_start", "teardown_end", "finished"]
    assert [times[k] for k in order] == sorted(times[k] for k in order)
    assert_nothing_left(sub.run_dir)
    token = sub.run_dir / "secrets" / "ray-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    secret = token.read_text()
    logs = [f for f in sub.run_dir.rglob("logs/**/*") if f.is_file()]  # Ray's kept ones too
    assert any(f.parent.parent.name == "ray" for f in logs)  # the node's Ray session logs
    for f in [sub.run_dir / "job.out", sub.run_dir / "job.sh", *logs]:
        assert secret not in f.read_text(errors="replace"), f"token leaked into {f}"


def test_two_emulated_nodes(tmp_path, run_root, cleanup):
    wf = workflow(tmp_path, f"""\
name: two
allocation: {{nodes: 2, walltime: 10m}}
ray: {{object_store_memory: 100000000, teardown_grace: 5}}
driver:
  function: hello_cluster:main
  args: {{tasks_per_node: 2}}
  cwd: {EXAMPLES}
""")
    sub = hpcray.submit(wf, run_root=run_root)
    cleanup.append(sub.run_dir)
    st = hpcray.wait(sub.run_dir, timeout=180)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    assert sorted(result["nodes"]) == sorted(n.name for n in st.nodes)
    assert {t["node_id"] for t in result["tasks"]} and len(
        {t["node_id"] for t in result["tasks"]}) == 2  # tasks pinned to each node ran there
    assert all(n.joined for n in st.nodes)
    assert_nothing_left(sub.run_dir)


def test_cluster_without_driver_connect_and_cancel(tmp_path, run_root, cleanup):
    wf = workflow(tmp_path, "name: interactive\nallocation: {walltime: 10m}\n"
                            "ray: {teardown_grace: 5}\n")
    sub = hpcray.submit(wf, run_root=run_root)
    cleanup.append(sub.run_dir)
    assert wait_until(lambda: hpcray.status(sub.run_dir).state == "running", 120), \
        hpcray.logs(sub.run_dir)
    # a user's own program inside the allocation joins with hpcray.connect()
    code = ("import hpcray, sys; hpcray.connect(sys.argv[1]); import ray; "
            "print(int(ray.cluster_resources()['CPU'])); "
            "print(ray.get(ray.remote(lambda: 'ran').remote()))")
    out = subprocess.run([sys.executable, "-c", code, str(sub.run_dir)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(os.cpu_count()), "ran"]
    st = hpcray.cancel(sub.run_dir, wait_s=90)
    assert st.state == "cancelled"
    assert st.times["teardown_end"] >= st.times["cancel_requested"]
    assert_nothing_left(sub.run_dir)


def test_failing_driver_is_reported_and_torn_down(tmp_path, run_root, cleanup):
    """Also: the driver's temp dir is the head's short one, not the job's (a long per-job
    TMPDIR breaks multiprocessing's AF_UNIX sockets)."""
    code = ("import os, sys, tempfile; print('tmp', os.environ['TMPDIR'], "
            "os.environ['RAY_TMPDIR'], tempfile.gettempdir()); sys.exit(3)")
    wf = workflow(tmp_path, "name: broken\nallocation: {walltime: 10m, env: {TMPDIR: "
                            f"{tmp_path}}}}}\nray: {{teardown_grace: 5}}\n"
                            f"driver: {{command: [python3, -c, \"{code}\"]}}\n")
    sub = hpcray.submit(wf, run_root=run_root)
    cleanup.append(sub.run_dir)
    st = hpcray.wait(sub.run_dir, timeout=180)
    assert st.state == "failed"
    assert "exited with code 3" in st.error
    assert read_json(sub.run_dir / "run.json")["driver_exit_code"] == 3
    plan = read_json(sub.run_dir / "plan.json")
    head_temp = f"{plan['temp_root']}/hr{plan['cluster_id'].split('-')[2]}n0"
    assert f"tmp {head_temp} {head_temp} {head_temp}" in hpcray.logs(sub.run_dir)
    assert_nothing_left(sub.run_dir)


@pytest.mark.faults
def test_lost_nodes_are_reported(tmp_path, run_root, cleanup):
    """A worker whose node goes away is recorded while the run goes on; losing the head ends
    the run as failed, naming it."""
    import signal

    wf = workflow(tmp_path, "name: lossy\nallocation: {nodes: 2, walltime: 10m}\n"
                            "ray: {object_store_memory: 100000000, teardown_grace: 5}\n")
    sub = hpcray.submit(wf, run_root=run_root)
    cleanup.append(sub.run_dir)
    assert wait_until(lambda: hpcray.status(sub.run_dir).state == "running", 120), \
        hpcray.logs(sub.run_dir)
    head, worker = (n.name for n in hpcray.status(sub.run_dir).nodes)
    os.kill(read_json(sub.run_dir / "nodes" / f"{worker}.json")["pid"], signal.SIGTERM)
    assert wait_until(lambda: any(n.lost for n in hpcray.status(sub.run_dir).nodes), 30)
    st = hpcray.status(sub.run_dir)
    assert st.state == "running"
    assert [n.name for n in st.nodes if n.lost] == [worker]
    assert "lost while running" in st.summary()
    os.kill(read_json(sub.run_dir / "nodes" / f"{head}.json")["pid"], signal.SIGTERM)
    st = hpcray.wait(sub.run_dir, timeout=60)
    assert st.state == "failed" and f"head node {head} lost" in st.error
    assert_nothing_left(sub.run_dir)
