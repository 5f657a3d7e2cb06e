"""hpcray on a real 2-node Slurm (slurm-wlm + munge on this machine, tests/slurm/testcluster.py).

Both emulated nodes are this host, each in a network namespace of its own with its address on
hsn0 (or both on 127.0.0.1 where namespaces cannot be made); besides the address, what differs
between them is what Slurm gives each step: SLURMD_NODENAME, CPUs, the fake GPU's
CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import hpcray
from hpcray.rundir import read_json
from hpcray.schedulers.hostlist import expand_hostlist
from tests.conftest import REPO, ray_processes, wait_until
from tests.views.checks import assert_report_shows_the_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLES = REPO / "examples"


def workflow(tmp_path: Path, name: str, alloc: str, driver: str | None = None,
             ray: str = "", python: str | None = None) -> Path:
    text = (f"name: {name}\nallocation:\n  nodes: 2\n  walltime: 10m\n{alloc}"
            + (f"  python: {python}\n" if python else "")
            + f"ray:\n  object_store_memory: 100000000\n  teardown_grace: 5\n{ray}")
    if driver:
        text += driver
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


HELLO = (f"driver:\n  function: hello_cluster:main\n  args: {{tasks_per_node: 2}}\n"
         f"  cwd: {EXAMPLES}\n")


def cancel_and_kill(started: list[Path]) -> None:
    """Whatever of these runs is still queued or running is cancelled, its processes killed."""
    for run in started:
        data = read_json(run / "run.json", {})
        if data.get("job_id"):
            subprocess.run(["scancel", str(data["job_id"])], capture_output=True, timeout=30)
        cluster = data.get("cluster_id")
        if cluster:
            wait_until(lambda c=cluster: not ray_processes(c), 30)
            for proc in ray_processes(cluster):
                proc.kill()


@pytest.fixture
def runs(slurm_cluster):
    """Runs of a test; whatever is still queued or running is cancelled even if the test fails."""
    started: list[Path] = []
    yield started
    cancel_and_kill(started)


def submit(path: Path, run_root: Path, runs: list[Path]) -> hpcray.api.Submission:
    # the testslurm profile (hsn0), or the fixture's copy naming lo where nodes share 127.0.0.1
    sub = hpcray.submit(path, site=os.environ.get("HPCRAY_TEST_SLURM_SITE", "testslurm"),
                        run_root=run_root)
    runs.append(sub.run_dir)
    assert sub.job_id.isdigit()
    return sub


STAGES_HEADER = ("allocation: {nodes: 2, walltime: 10m, gpus_per_node: 0}\n"
                 "ray: {object_store_memory: 100000000, teardown_grace: 5}\nstages:\n")


def run_stages(stem: str, text: str, run_root: Path, runs: list[Path]):
    """A stages workflow beside the stage functions (tests/fixtures/stages), run to its end."""
    from tests.conftest import FIXTURES

    path = FIXTURES / "stages" / f"{stem}.yaml"
    path.write_text(text)
    try:
        sub = submit(path, run_root, runs)
        return sub, hpcray.wait(sub.run_dir, timeout=240)
    finally:
        path.unlink()


def assert_nothing_left(run_dir: Path) -> None:
    cluster = read_json(run_dir / "run.json")["cluster_id"]
    assert wait_until(lambda: not ray_processes(cluster), 30), [
        " ".join(p.cmdline()[:4]) for p in ray_processes(cluster)]


def test_two_node_job(slurm_cluster, tmp_path, run_root, runs):
    sub = submit(workflow(tmp_path, "twonodes", "  gpus_per_node: 1\n", HELLO), run_root, runs)
    st = hpcray.wait(sub.run_dir, timeout=240)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    # Ray saw both nodes with what the allocation gave each: 2 CPUs and the (fake) GPU
    assert {name: (n["cpus"], n["gpus"]) for name, n in result["nodes"].items()} == {
        "node1": (2, 1), "node2": (2, 1)}
    # each task pinned to a node ran in that node's Slurm step
    by_id = {n["node_id"]: name for name, n in result["nodes"].items()}
    assert len(result["tasks"]) == 4
    for task in result["tasks"]:
        assert task["slurm_node"] == by_id[task["node_id"]]
    assert {t["slurm_node"] for t in result["tasks"]} == {"node1", "node2"}
    assert_nothing_left(sub.run_dir)
    # each node's agent kept its Ray session logs in the run directory (token-free)
    token = (sub.run_dir / "secrets" / "ray-token").read_bytes().strip()
    for node in ("node1", "node2"):
        kept = sub.run_dir / "logs" / "ray" / node
        assert (kept / "raylet.out").is_file(), node
        assert not [p for p in kept.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert (sub.run_dir / "logs" / "ray" / "node1" / "gcs_server.out").is_file()  # the head


def test_two_jobs_at_once_on_the_same_nodes(slurm_cluster, tmp_path, run_root, runs):
    """Two jobs share both nodes at once. Each driver waits at a gate until the other's has
    reached it, so they overlap by construction of the test, not by the machine's speed; if
    Slurm or hpcray kept them apart, the gate would time out and fail both runs."""
    from tests.conftest import FIXTURES

    gate = tmp_path / "gate"
    gate.mkdir()
    alloc = "  gpus_per_node: 0\n  cpus_per_node: 1\n"
    subs = []
    for i in (1, 2):
        driver = (f"driver:\n  function: gated_hello:main\n  cwd: {FIXTURES / 'gates'}\n"
                  f"  args: {{gate: '{gate}', name: job{i}, peers: 2, examples: '{EXAMPLES}'}}\n")
        subs.append(submit(workflow(tmp_path, f"job{i}", alloc, driver), run_root, runs))
    finals = [hpcray.wait(s.run_dir, timeout=240) for s in subs]
    assert [f.state for f in finals] == ["completed", "completed"], [
        hpcray.logs(s.run_dir) for s in subs]
    for sub in subs:
        assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"
        result = json.loads((sub.run_dir / "driver-result.json").read_text())
        assert sorted(result["nodes"]) == ["node1", "node2"]  # its own two nodes, not four
        assert result["gate_passed"] == ["job1", "job2"]  # both were up together
        assert_nothing_left(sub.run_dir)
    clusters = [read_json(s.run_dir / "run.json")["cluster_id"] for s in subs]
    assert clusters[0] != clusters[1]
    # job-private port blocks: no block is shared between the two jobs' Ray nodes
    bases = [read_json(f)["port_base"] for s in subs for f in (s.run_dir / "nodes").glob("*.json")]
    assert len(bases) == 4 and len(set(bases)) == 4


def _running(run_dir: Path) -> bool:
    return hpcray.status(run_dir).state == "running"


@pytest.mark.faults
def test_cancel_mid_run(slurm_cluster, tmp_path, run_root, runs):
    sub = submit(workflow(tmp_path, "tocancel", "  gpus_per_node: 0\n"), run_root, runs)
    assert wait_until(lambda: _running(sub.run_dir), 180), hpcray.logs(sub.run_dir)
    cluster = read_json(sub.run_dir / "run.json")["cluster_id"]
    assert ray_processes(cluster)  # the cluster is really up before we cancel
    st = hpcray.cancel(sub.run_dir, wait_s=120)
    assert st.state == "cancelled"
    assert slurm_cluster.wait_job(sub.job_id) == "CANCELLED"
    assert_nothing_left(sub.run_dir)


@pytest.mark.faults
def test_walltime_warning_signal(slurm_cluster, tmp_path, run_root, runs):
    """The job script asks Slurm for USR2 to the batch shell before the limit
    (--signal=B:USR2@...); scancel delivers exactly that signal now."""
    sub = submit(workflow(tmp_path, "walltimed", "  gpus_per_node: 0\n"), run_root, runs)
    assert "#SBATCH --signal=B:USR2@120" in (sub.run_dir / "job.sh").read_text()
    assert wait_until(lambda: _running(sub.run_dir), 180), hpcray.logs(sub.run_dir)
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", sub.job_id)
    st = hpcray.wait(sub.run_dir, timeout=120)
    assert st.state == "walltime"
    assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"  # drained and exited cleanly
    assert_nothing_left(sub.run_dir)


ISOLATE = {
    # no network at all on node2: its agent fails at once, naming the missing address
    "no-network": 'exec unshare --net "$PY" "$@"',
    # node2 has a loopback of its own (and its hsn0, on a link to nowhere, where the nodes
    # have their own addresses) but no route to the head: Ray keeps retrying the GCS, so node2
    # never joins and the join timeout names it
    "head-unreachable": 'exec unshare --net bash -c \'ip link set lo up{hsn0} && exec "$0" '
                        '"$@"\' "$PY" "$@"',
}


def _isolated(how: str, cluster) -> str:
    hsn0 = ""
    if cluster.separate_addresses:
        hsn0 = (" && ip link add hsn0 type dummy && "
                f"ip addr add {cluster.addresses['node2']}/24 dev hsn0 && ip link set hsn0 up")
    return ISOLATE[how].replace("{hsn0}", hsn0)


@pytest.mark.parametrize("how", sorted(ISOLATE))
def test_worker_that_cannot_join_fails_the_job_naming_it(how, slurm_cluster, tmp_path,
                                                         run_root, runs):
    # node2's agent runs in its own network namespace (created by the test, as root)
    wrapper = tmp_path / "python-node2-isolated"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"PY={Path(hpcray.api.sys.executable)}\n"
        'if [ "$SLURMD_NODENAME" = node2 ] && [ "$3" = node ]; then\n'
        f"  {_isolated(how, slurm_cluster)}\n"
        "fi\n"
        'exec "$PY" "$@"\n')
    wrapper.chmod(0o755)
    path = workflow(tmp_path, "unreachable", "  gpus_per_node: 0\n", HELLO,
                    ray="  join_timeout: 12\n  head_timeout: 40\n", python=str(wrapper))
    sub = submit(path, run_root, runs)
    st = hpcray.wait(sub.run_dir, timeout=200)
    assert st.state == "failed"
    assert "node2" in st.error and "node1" not in st.error.splitlines()[0]
    assert "last lines of" in st.error  # the tail of node2's log comes with the error
    if how == "head-unreachable":
        assert "did not join within 12s" in st.error
    started = read_json(sub.run_dir / "run.json")["times"]
    assert started["finished"] - started["launched"] < 12 + 60  # within the join timeout
    assert slurm_cluster.wait_job(sub.job_id) == "FAILED"
    assert_nothing_left(sub.run_dir)


def test_hostlist_expansion_matches_scontrol(slurm_cluster):
    for text in ("node[1-2]", "node1,node2", "frontier[00001-00003,00010]", "a[1-2]b[3-4]"):
        out = slurm_cluster.run("scontrol", "show", "hostnames", text).split()
        assert expand_hostlist(text) == out


def test_service_replicas_pinned_to_node2_run_there(slurm_cluster, tmp_path, run_root, runs):
    """Both spellings of a placement constraint, one service each, in one job."""
    from tests.conftest import FIXTURES

    path = tmp_path / "pinned.yaml"
    path.write_text(
        "name: pinned\nallocation: {nodes: 2, walltime: 10m, gpus_per_node: 0}\n"
        "ray: {object_store_memory: 100000000, teardown_grace: 5}\nservices:\n"
        "  - {name: one, deployment: noop, replicas: 2, resources: {cpus: 0.1, node: node2}}\n"
        "  - {name: listed, deployment: noop, replicas: 2,\n"
        "     resources: {cpus: 0.1, nodes: [node2]}}\n"
        f"driver:\n  function: drive_services:main\n  cwd: {FIXTURES / 'services'}\n"
        "  args: {services: {one: 2, listed: 2}}\n")
    sub = submit(path, run_root, runs)
    st = hpcray.wait(sub.run_dir, timeout=240)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    for name in ("one", "listed"):
        assert len(result[name]["replicas"]) == 2, name
        assert set(result[name]["replicas"].values()) == {"node2"}, name
    assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"
    assert_nothing_left(sub.run_dir)


# what ALCF's PBS gives a job: a per-job TMPDIR long enough that AF_UNIX socket paths
# under it pass 107 bytes (here under the test's own directory)
SITE_TMPDIR = "pbs.1234567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov/a-job-private-dir"


def test_stages_spread_over_both_nodes(slurm_cluster, tmp_path, run_root, runs):
    """100 function tasks and 20 executables over the 2-node allocation, with a streaming
    edge and a dependency; every task's record names the node it ran on. Every task sees
    its node's short temp dir as TMPDIR (and RAY_TMPDIR), not the long one the job's
    environment set."""
    from hpcray.bootstrap.plan import ClusterPlan
    from hpcray.rundir import RunDir
    from hpcray.runtime.tempdir import temp_dir_for
    from hpcray.stages.records import read_attempts

    site_tmpdir = tmp_path / SITE_TMPDIR
    header = STAGES_HEADER.replace(
        "gpus_per_node: 0}", f"gpus_per_node: 0, setup: ['mkdir -p {site_tmpdir}', "
        f"'export TMPDIR={site_tmpdir}']}}")
    sub, st = run_stages(
        f"slurm-{tmp_path.name}", "name: stagesx2\n" + header
        + "  - name: work\n    function: stagefns:slow_square_noting_tmp\n"
        f"    each: {{items: [{', '.join(str(i) for i in range(100))}]}}\n"
        "    resources: {cpus: 1}\n"
        "  - name: exe\n    command: [sh, -c, 'echo {item}; sleep 0.2']\n"
        "    each: {items: [%s]}\n    after: [work]\n    resources: {cpus: 1}\n"
        % ", ".join(str(i) for i in range(20))
        + "  - name: tail\n    command: [echo, '{item}']\n    stream_from: exe\n"
          "    resources: {cpus: 0.5}\n", run_root, runs)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    attempts = read_attempts(sub.run_dir)
    assert len(attempts) == 140 and all(a["state"] == "done" for a in attempts)
    for stage in ("work", "exe"):
        assert {a["node"] for a in attempts if a["stage"] == stage} == {"node1", "node2"}, stage
    plan = ClusterPlan.load(RunDir(sub.run_dir))
    expected = {n.name: temp_dir_for(plan.temp_root, plan.job_id, n.index) for n in plan.nodes}
    seen = [json.loads(line) for line in (sub.run_dir / "tmpdirs.jsonl").read_text().splitlines()]
    assert len(seen) == 100 and {s["node"] for s in seen} == {"node1", "node2"}
    for line in seen:
        short = expected[line["node"]]
        assert (line["TMPDIR"], line["RAY_TMPDIR"], line["gettempdir"]) == (short,) * 3, line
    # `hpcray report`: each of the 140 attempts is one of Ray's tasks, on the node it ran on
    rep = assert_report_shows_the_run(sub.run_dir)
    assert {i.node for i in rep.items if i.kind == "task"} == {"node1", "node2"}
    assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"
    assert_nothing_left(sub.run_dir)


def test_a_launched_executable_sees_both_nodes_through_srun(slurm_cluster, tmp_path, run_root,
                                                            runs):
    """`launch: {nodes: 2, per_node: 2}`: Ray reserves a bundle of two processes' resources on
    each node, then srun (the site's launcher) starts two ranks on each: what an MPI program
    needs."""
    from hpcray.stages.records import read_attempts

    sub, st = run_stages(
        f"slurm-mpi-{tmp_path.name}", "name: mpix2\n" + STAGES_HEADER
        + "  - name: mpi\n"
        "    command: [sh, -c, 'echo \"$SLURMD_NODENAME rank $SLURM_PROCID of $SLURM_NTASKS\"']\n"
        "    launch: {nodes: 2, per_node: 2}\n    resources: {cpus: 0.5}\n", run_root, runs)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    (attempt,) = read_attempts(sub.run_dir)
    assert sorted(attempt["hosts"]) == ["node1", "node2"]
    lines = sorted(Path(attempt["stdout"]).read_text().split("\n")[:-1])
    assert lines == ["node1 rank 0 of 4", "node1 rank 1 of 4", "node2 rank 2 of 4",
                     "node2 rank 3 of 4"]
    assert_nothing_left(sub.run_dir)


def _lose_node(slurm_cluster, run_dir: Path, cluster_id: str, node: str) -> list[str]:
    """What losing a node does to a job: its slurmd, its job steps and every process of the
    run on it die at once (SIGKILL), so nothing on it can say goodbye."""
    import contextlib
    import os
    import signal

    import psutil

    agent = psutil.Process(read_json(run_dir / "nodes" / f"{node}.json")["pid"])
    victims = [agent, *ray_processes(f"{cluster_id}/{node}")]
    steps = set()
    for proc in victims:
        try:
            parent = proc.parent()
            if parent is not None and parent.name().startswith("slurmstepd"):
                steps.add(parent)
        except psutil.NoSuchProcess:
            continue
    slurmd = int((slurm_cluster.root / f"slurmd-{node}.pid").read_text().split()[0])
    doomed, killed = [psutil.Process(slurmd), *steps, *victims], []
    for proc in doomed:  # named first: one process' death may end another (its children)
        with contextlib.suppress(psutil.NoSuchProcess):
            killed.append(" ".join(proc.cmdline()[:3]))
    for proc in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    assert not any(p.pid == os.getpid() for p in victims)
    return killed


def _bring_back(slurm_cluster, node: str) -> None:
    """Restart the lost node's slurmd (in its namespace) so the next tests have two nodes
    again."""
    slurm_cluster.start_slurmd(node)
    slurm_cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    assert wait_until(lambda: slurm_cluster.idle([node]), 90), \
        slurm_cluster.run("sinfo", "-N", check=False)


@pytest.mark.faults
@pytest.mark.timeout(420)
def test_losing_a_worker_node_during_stages(slurm_cluster, tmp_path, run_root, runs):
    """node2's slurmd, job steps and Ray processes are SIGKILLed while a stage runs on both
    nodes. Its tasks are retried on node1, the service keeps answering, the run finishes
    naming node2 as lost, and nothing of the run is left on either node."""
    from hpcray.stages.records import read_attempts
    from tests.conftest import FIXTURES

    items = ", ".join(f"{0.6 + i / 1000:.3f}" for i in range(40))
    gate = tmp_path / "gate"
    path = FIXTURES / "stages" / f"slurm-lose-{tmp_path.name}.yaml"
    # Ray declares a node dead after missed health checks (by default about 30 s); the
    # test asks for 1 s x 3, through the job's environment as a user could
    header = STAGES_HEADER.replace(
        "gpus_per_node: 0}", "gpus_per_node: 0,\n  env: {RAY_health_check_period_ms: '1000', "
        "RAY_health_check_failure_threshold: '3'}}")
    path.write_text(
        "name: losenode\n" + header
        + f"  - name: work\n    function: stagefns:sleeps_held\n    args: {{gate: '{gate}'}}\n"
        f"    each: {{items: [{items}]}}\n"
        "    resources: {cpus: 0.9}\n    retries: 2\n"
        "  - name: probe\n    function: stagefns:call_service\n"
        "    each: {items: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n    after: [work]\n"
        "    resources: {cpus: 0.1}\n"
        "services:\n  - {name: noop, deployment: noop, replicas: 2, resources: {cpus: 0.05}}\n")
    killed: list[str] = []
    try:
        sub = submit(path, run_root, runs)
        cluster = None

        def node2_runs_a_task() -> bool:  # held there until the gate opens
            return any(gate.parent.glob(f"{gate.name}.running-node2-*"))

        assert wait_until(node2_runs_a_task, 180), hpcray.logs(sub.run_dir)
        cluster = read_json(sub.run_dir / "run.json")["cluster_id"]
        killed = _lose_node(slurm_cluster, sub.run_dir, cluster, "node2")
        killed_at = time.time()
        gate.write_text("")  # node1's tasks finish; node2's were in flight when it died
        st = hpcray.wait(sub.run_dir, timeout=240)
    finally:
        gate.write_text("")
        path.unlink(missing_ok=True)
        _bring_back(slurm_cluster, "node2")
    assert any("slurmd" in k for k in killed) and any("raylet" in k for k in killed), killed
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    assert [n.name for n in st.nodes if n.lost] == ["node2"]
    assert "node2" in read_json(sub.run_dir / "run.json")["nodes_lost"]
    attempts = read_attempts(sub.run_dir)
    work = [a for a in attempts if a["stage"] == "work"]
    done = [a for a in work if a["state"] == "done"]
    # every item done exactly once; what was on node2 failed explicitly and ran again
    assert sorted(float(a["item"]) for a in done) == sorted(float(x) for x in items.split(", "))
    failed = [a for a in work if a["state"] != "done"]
    assert failed and all(a["node"] == "node2" and a["state"] == "lost"
                          and a["error"].startswith("NodeDiedError") for a in failed), failed
    lost = read_json(sub.run_dir / "run.json")["nodes"]["node2"]
    assert lost["lost_reason"].startswith("Ray marked the node dead"), lost
    print(f"node2 recorded lost {lost['lost'] - killed_at:.1f} s after the kill")
    times = read_json(sub.run_dir / "run.json")["times"]
    print(f"teardown took {times['teardown_end'] - times['teardown_start']:.1f} s")
    probes = [a for a in attempts if a["stage"] == "probe"]
    assert len(probes) == 10 and all(a["state"] == "done" for a in probes), probes
    assert_nothing_left(sub.run_dir)
