"""Elastic runs on the real test Slurm: a 1-node run grown by a worker-only batch job on the
second node, shrunk again, a worker job cancelled under work, and the elastic controller
growing and releasing by itself (docs/elastic.md). Tasks hold at gate files
(tests/fixtures/stages/elasticfns.py), so each step acts on known tasks on known nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hpcray
from hpcray.bootstrap.elastic import decisions
from hpcray.rundir import RunDir, read_json
from hpcray.stages.records import read_attempts
from tests.conftest import FIXTURES, REPO, ray_processes, wait_until
from tests.slurm.test_slurm import cancel_and_kill, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(420)]

@pytest.fixture
def runs(slurm_cluster):
    """Runs of a test; their worker jobs and then they are cancelled, their processes
    killed, even if the test fails."""
    started: list[Path] = []
    yield started
    for run in started:
        for tag, entry in (read_json(run / "run.json", {}) or {}).get("jobs", {}).items():
            if tag != "main" and entry.get("job_id"):
                subprocess.run(["scancel", str(entry["job_id"])], capture_output=True,
                               timeout=30)
                plan = read_json(run / "jobs" / tag / "plan.json", {}) or {}
                if plan.get("cluster_id"):
                    wait_until(lambda c=plan["cluster_id"]: not ray_processes(c), 30)
                    for proc in ray_processes(plan["cluster_id"]):
                        proc.kill()
    cancel_and_kill(started)


HEADER = ("allocation: {nodes: 1, walltime: 10m, gpus_per_node: 0}\n"
          "ray: {object_store_memory: 100000000, teardown_grace: 5}\n")

# from a separate process (its Ray connection ends with it): scale the service to N (0: keep
# its count), then call it until N replicas (at least 20 calls) answered; prints
# {replica: node}
SERVICE_NODES = """
import json, sys, time
import hpcray
hpcray.connect(sys.argv[1])
from hpcray.services.manager import scale
want = int(sys.argv[2])
if want:
    scale("svc", want)
handle = hpcray.service("svc")
seen, calls, deadline = {}, 0, time.monotonic() + 150
while (len(seen) < max(want, 1) or calls < 20) and time.monotonic() < deadline:
    answer = handle.call("echo", calls, timeout=30)
    seen[answer.replica] = answer.node
    calls += 1
print(json.dumps(seen))
"""


def service_nodes(run_dir: Path, replicas: int = 0) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", SERVICE_NODES, str(run_dir), str(replicas)],
                          capture_output=True, text=True, timeout=200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def workflow(name: str, gate: Path, items: int, extra: str = "", retries: int = 0) -> Path:
    path = FIXTURES / "stages" / f"{name}-{gate.parent.name}.yaml"
    path.write_text(
        f"name: {name}\n" + HEADER + extra + "stages:\n"
        f"  - name: work\n    function: elasticfns:held\n    args: {{gate: '{gate}'}}\n"
        f"    each: {{items: [{', '.join(str(i) for i in range(items))}]}}\n"
        f"    resources: {{cpus: 1}}\n    retries: {retries}\n"
        # the run stays up after its stages until the test says
        f"driver:\n  command: [sh, -c, 'while [ ! -e {gate}.end ]; do sleep 0.2; done']\n")
    return path


def nodes_of(run_dir: Path, gate: Path, count: int) -> tuple[str, str]:
    """(the main job's node, the other one), once `count` tasks run: Slurm gives the main
    job whichever node is free."""
    assert wait_until(lambda: len(list(gate.parent.glob(f"{gate.name}.running-*"))) == count,
                      240), hpcray.logs(run_dir)
    first = read_json(run_dir / "run.json")["node_names"][0]
    return first, next(n for n in ("node1", "node2") if n != first)


def let_go(gate: Path, workflow_file: Path) -> None:
    """Every held task and the driver go on (a failed test leaves nothing waiting), and the
    workflow file written beside the stage functions goes."""
    for name in ("go", "end"):
        (gate.parent / f"{gate.name}.{name}").write_text("")
    workflow_file.unlink(missing_ok=True)


def running_on(gate: Path, node: str) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[-1] for p in
                  gate.parent.glob(f"{gate.name}.running-{node}-*"))


def job(run_dir: Path, tag: str) -> dict:
    return read_json(run_dir / "run.json", {}).get("jobs", {}).get(tag, {})


def done_once(run_dir: Path, items: int) -> dict[int, str]:
    """Each item's one `done` attempt's node; fails on an item done twice or never."""
    done = [a for a in read_attempts(run_dir) if a["state"] == "done"]
    by_item: dict[int, list[str]] = {}
    for attempt in done:
        by_item.setdefault(int(attempt["index"]), []).append(attempt["node"])
    assert sorted(by_item) == list(range(items)), by_item
    assert all(len(nodes) == 1 for nodes in by_item.values()), by_item
    return {item: nodes[0] for item, nodes in by_item.items()}


def assert_worker_gone(run_dir: Path, tag: str) -> None:
    plan = read_json(run_dir / "jobs" / tag / "plan.json")
    assert wait_until(lambda: not ray_processes(plan["cluster_id"]), 30), [
        " ".join(p.cmdline()[:4]) for p in ray_processes(plan["cluster_id"])]


def test_grow_runs_waiting_tasks_and_a_replica_there_then_shrink_lets_them_finish(
        slurm_cluster, tmp_path, run_root, runs):
    """The main job's node holds the service's replica and one task; two tasks wait. `grow`
    brings the other node in a worker job: both waiting tasks start there, and a replica
    added then is placed there. `shrink` drains it: its running task finishes there (not
    retried), the replica moves to the main node, the job ends COMPLETED and none of its
    processes is left."""
    gate = tmp_path / "gate"
    path = workflow("grow", gate, 3, "services:\n  - {name: svc, deployment: noop, "
                    "replicas: 1, resources: {cpus: 1}}\n")
    shrunk: list = []
    try:
        sub = submit(path, run_root, runs)
        main, new = nodes_of(sub.run_dir, gate, 1)
        grown = hpcray.grow(sub.run_dir, nodes=1)
        assert grown.tag == "w1"
        assert wait_until(lambda: len(running_on(gate, new)) == 2, 180), \
            hpcray.logs(sub.run_dir)
        assert wait_until(lambda: job(sub.run_dir, "w1").get("state") == "joined", 30)
        st = hpcray.status(sub.run_dir)
        grown_node = next(n for n in st.nodes if n.name == new)
        assert grown_node.job and grown_node.job.startswith(f"w1 ({grown.job_id})"), \
            st.summary()
        # one CPU free on the new node only: the replica added now can go nowhere else
        (gate.parent / f"{gate.name}.go-{running_on(gate, new)[0]}").write_text("")
        replicas = service_nodes(sub.run_dir, 2)
        assert sorted(replicas.values()) == sorted([main, new]), replicas
        still = running_on(gate, new)
        held = [i for i in still if not (gate.parent / f"{gate.name}.done-{new}-{i}").exists()]
        assert len(held) == 1, still

        thread = threading.Thread(target=lambda: shrunk.extend(
            hpcray.shrink(sub.run_dir, job="w1", timeout=240)), daemon=True)
        thread.start()
        assert wait_until(lambda: job(sub.run_dir, "w1").get("state") == "draining", 60)
        (gate.parent / f"{gate.name}.go").write_text("")  # the held tasks on both nodes
        thread.join(260)
        assert shrunk and shrunk[0].state == "ended", (shrunk, job(sub.run_dir, "w1"))
        assert "released (hpcray shrink)" in shrunk[0].reason
        assert slurm_cluster.wait_job(grown.job_id) == "COMPLETED"
        assert_worker_gone(sub.run_dir, "w1")
        # the service answers with its replicas on the main job's node alone
        assert set(service_nodes(sub.run_dir).values()) == {main}
        (gate.parent / f"{gate.name}.end").write_text("")
        st = hpcray.wait(sub.run_dir, timeout=120)
    finally:
        let_go(gate, path)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    nodes = done_once(sub.run_dir, 3)
    assert sorted(nodes.values()) == sorted([main, new, new]), nodes
    assert all(a["state"] == "done" for a in read_attempts(sub.run_dir)), \
        read_attempts(sub.run_dir)
    data = read_json(sub.run_dir / "run.json")
    assert data.get("nodes_lost", []) == []
    assert data["nodes"][new]["job"] == "w1" and "released" in data["nodes"][new]
    assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"


def test_a_worker_job_cancelled_under_work_is_released_and_its_tasks_run_again(
        slurm_cluster, tmp_path, run_root, runs):
    """scancel of the worker job while two tasks run on its node: they run again on the main
    node, every item is done exactly once, the run completes, the worker's node counts as
    released (its job was cancelled), not as a lost node."""
    gate = tmp_path / "gate"
    path = workflow("cancelw", gate, 4, retries=2)
    try:
        sub = submit(path, run_root, runs)
        main, new = nodes_of(sub.run_dir, gate, 2)
        grown = hpcray.grow(sub.run_dir, nodes=1)
        assert wait_until(lambda: len(running_on(gate, new)) == 2, 180), \
            hpcray.logs(sub.run_dir)
        on_new = {int(i) for i in running_on(gate, new)}
        subprocess.run(["scancel", grown.job_id], check=True, timeout=30)
        assert slurm_cluster.wait_job(grown.job_id) == "CANCELLED"
        assert wait_until(lambda: job(sub.run_dir, "w1").get("state") == "ended", 60)
        (gate.parent / f"{gate.name}.go").write_text("")
        assert wait_until(lambda: len(list(gate.parent.glob(f"{gate.name}.done-*"))) >= 4,
                          180), hpcray.logs(sub.run_dir)
        (gate.parent / f"{gate.name}.end").write_text("")
        st = hpcray.wait(sub.run_dir, timeout=180)
    finally:
        let_go(gate, path)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    nodes = done_once(sub.run_dir, 4)
    assert set(nodes.values()) == {main}, nodes  # the new node's two ran again on main
    # the attempts that failed are those of the two tasks the new node ran (a lost
    # worker's attempt cannot say where it ran)
    again = [a for a in read_attempts(sub.run_dir) if a["state"] != "done"]
    assert sorted(int(a["index"]) for a in again) == sorted(on_new), again
    data = read_json(sub.run_dir / "run.json")
    assert new not in data.get("nodes_lost", []), data.get("nodes_lost")
    assert "released" in data["nodes"][new], data["nodes"][new]
    assert_worker_gone(sub.run_dir, "w1")


def test_elastic_grows_to_max_jobs_then_releases_the_idle_job(slurm_cluster, tmp_path,
                                                              run_root, runs):
    """Six one-CPU tasks on a 2-CPU run: four wait, which two worker jobs would take, but
    `max_jobs: 1` submits one. Once the tasks are done its node sits idle, and after
    `idle_after` the controller releases it; both decisions are in elastic.jsonl."""
    gate = tmp_path / "gate"
    path = workflow("adapt", gate, 6, "elastic: {max_jobs: 1, nodes_per_job: 1, "
                    "grow_after: 2s, idle_after: 5s, interval: 0.5}\n")
    try:
        sub = submit(path, run_root, runs)
        main, new = nodes_of(sub.run_dir, gate, 2)
        assert wait_until(lambda: len(running_on(gate, new)) == 2, 300), \
            (hpcray.logs(sub.run_dir), decisions(RunDir(sub.run_dir)))
        (gate.parent / f"{gate.name}.go").write_text("")
        assert wait_until(lambda: len(list(gate.parent.glob(f"{gate.name}.done-*"))) == 6, 180)
        assert wait_until(lambda: job(sub.run_dir, "w1").get("state") == "ended", 120), \
            (job(sub.run_dir, "w1"), decisions(RunDir(sub.run_dir)))
        worker_id = job(sub.run_dir, "w1")["job_id"]
        assert slurm_cluster.wait_job(worker_id) == "COMPLETED"
        (gate.parent / f"{gate.name}.end").write_text("")
        st = hpcray.wait(sub.run_dir, timeout=120)
    finally:
        let_go(gate, path)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    said = decisions(RunDir(sub.run_dir))
    assert [d["action"] for d in said] == ["grow", "shrink"], said
    assert "waiting" in said[0]["reason"] and said[0]["job"] == "w1"
    assert "idle" in said[1]["reason"] and said[1]["job"] == "w1"
    workers = [t for t, j in read_json(sub.run_dir / "run.json")["jobs"].items()
               if j.get("role") == "worker"]
    assert workers == ["w1"]  # max_jobs held, though two jobs' worth of tasks waited
    done_once(sub.run_dir, 6)
    assert_worker_gone(sub.run_dir, "w1")
