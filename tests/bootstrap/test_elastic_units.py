"""The elastic controller's arithmetic and a worker job's request, without a cluster."""

from __future__ import annotations

import pytest

from hpcray.bootstrap.elastic import jobs_to_submit, nodes_wanted
from hpcray.spec.models import ElasticSpec
from tests.conftest import FIXTURES


def test_nodes_wanted_counts_cpus_and_gpus_and_leaves_out_what_no_node_holds():
    pending = [({"CPU": 1.0}, 6), ({"CPU": 1.0, "GPU": 1.0}, 3),
               ({"CPU": 64.0}, 1),                       # bigger than any node
               ({"CPU": 1.0, "hpcray-node:n7": 0.001}, 2)]  # pinned to another node
    needed, growable = nodes_wanted(pending, cpus=4, gpus=2)
    assert growable == [({"CPU": 1.0}, 6), ({"CPU": 1.0, "GPU": 1.0}, 3)]
    assert needed == 3  # 9 CPUs over 4 per node; 3 GPUs over 2 per node needs only 2
    assert nodes_wanted([({"CPU": 64.0}, 1)], cpus=4, gpus=0) == (0, [])
    assert nodes_wanted([({"GPU": 1.0}, 1)], cpus=4, gpus=0) == (0, [])


@pytest.mark.parametrize(("needed", "starting", "running", "expected"), [
    (4, 0, 0, 2),   # two 2-node jobs wanted, max_jobs 3
    (10, 0, 0, 3),  # capped by max_jobs
    (10, 1, 1, 1),  # one already on its way and one running: one more fits under max_jobs
    (2, 1, 0, 0),   # the job on its way covers it
    (10, 1, 2, 0),  # at max_jobs
])
def test_jobs_to_submit_within_max_jobs(needed, starting, running, expected):
    spec = ElasticSpec(max_jobs=3, nodes_per_job=2)
    assert jobs_to_submit(needed, spec, starting, running) == expected


def test_elastic_section_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_jobs"):
        ElasticSpec(max_jobs=0)
    with pytest.raises(ValidationError, match="idle_after"):
        ElasticSpec.model_validate({"idle_after": "soon"})


def test_worker_job_request_is_checked_before_submission(tmp_path, monkeypatch):
    """A worker job's script is the main one's with its own node count, walltime, output
    and `--job`; more nodes or walltime than the site allows fail before submitting."""
    from hpcray.api import prepare
    from hpcray.bootstrap.jobs import request_for
    from hpcray.errors import ResourceError
    from hpcray.schedulers import get_scheduler

    path = tmp_path / "wf.yaml"
    path.write_text("name: grow\nallocation: {nodes: 1, walltime: 1h}\n")
    site = tmp_path / "limited.yaml"  # the test Slurm's profile, with limits
    site.write_text((FIXTURES / "sites" / "testslurm.yaml").read_text()
                    + "max_nodes: 4\nmax_walltime: 7200\n")
    run, _ = prepare(path, str(site), run_root=tmp_path / "runs")
    request = request_for(run, "w1", nodes=3, walltime=1800)
    script = get_scheduler("slurm").job_script(request)
    assert "#SBATCH --nodes=3\n" in script and "#SBATCH --time=00:30:00\n" in script
    assert f"#SBATCH --output={run.path}/jobs/w1/job.out\n" in script
    assert script.rstrip().endswith(f"up --run-dir {run.path} --job w1")
    assert "#SBATCH --job-name=grow-w1\n" in script
    with pytest.raises(ResourceError, match="exceed"):
        request_for(run, "w1", nodes=5)
    with pytest.raises(ResourceError, match="limit"):
        request_for(run, "w1", walltime=3 * 3600)
    with pytest.raises(ResourceError, match="warning"):
        request_for(run, "w1", walltime=60)


def test_grow_and_shrink_refuse_what_cannot_be_done_before_submitting(tmp_path):
    """A run that is not running cannot grow; a shrink names a job or a node count, and
    never the main job's nodes; each says why, and nothing is submitted."""
    from click.testing import CliRunner

    from hpcray.api import prepare
    from hpcray.cli import main

    path = tmp_path / "wf.yaml"
    path.write_text("name: grow\nallocation: {nodes: 1, walltime: 1h}\n")
    run, _ = prepare(path, "local", run_root=tmp_path / "runs")
    cli = CliRunner()
    out = cli.invoke(main, ["grow", str(run.path), "--nodes", "1"])
    assert out.exit_code == 2 and "only a running run can grow" in out.output, out.output
    out = cli.invoke(main, ["shrink", str(run.path)])
    assert out.exit_code == 2 and "--job" in out.output and "--nodes" in out.output
    out = cli.invoke(main, ["shrink", str(run.path), "--nodes", "1"])
    assert out.exit_code == 2 and "the main job's nodes hold the head" in out.output
    out = cli.invoke(main, ["shrink", str(run.path), "--job", "w9"])
    assert out.exit_code == 2 and "no running worker job 'w9'" in out.output
    assert not run.jobs_dir.exists()


def _watch_on(tmp_path):
    """An ElasticWatch on a prepared run whose main job holds node1, with worker-job records
    written by hand: `follow` reads only run.json, the plans and the agents' state files."""
    from hpcray.api import prepare
    from hpcray.bootstrap.elastic import ElasticWatch
    from hpcray.bootstrap.resolved import load_resolved
    from hpcray.bootstrap.signals import Stop
    from hpcray.rundir import write_json_atomic

    path = tmp_path / "wf.yaml"
    path.write_text("name: grow\nallocation: {nodes: 1, walltime: 1h}\n"
                    "ray: {teardown_grace: 0}\n")
    run, _ = prepare(path, str(FIXTURES / "sites" / "testslurm.yaml"),
                     run_root=tmp_path / "runs")
    workflow, site, request = load_resolved(run)
    watch = ElasticWatch(run, workflow, site, request, {"address": "x"}, Stop(), 0.0)
    watch.settle_s = 3600  # a node gone from Ray waits for its agent's word, here always

    def worker(tag: str, state: str, **extra) -> None:
        run.update_job(tag, role="worker", state=state, job_id=f"10{tag[1:]}",
                       node_names=["node2"], **extra)
        (run.jobs_dir / tag).mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.jobs_dir / tag / "plan.json",
                          {"cluster_id": f"c-{tag}", "nodes": [{"name": "node2", "index": 1}]})

    def agent(state: str, **fields) -> None:
        write_json_atomic(run.node_state_file("node2"), {"state": state, **fields})

    return run, watch, worker, agent


def _table(node_id: str, alive: bool, death: str = "") -> dict:
    return {node_id: {"alive": alive, "resources": {"hpcray-node:node2": 1.0},
                      "death": death}}


def test_a_host_back_in_a_later_worker_job_is_followed_afresh(tmp_path):
    """node2 released by w1 comes back in w2: w2's node joins, shows as w2's (not w1's
    released one), and its later release is recorded again."""
    run, watch, worker, agent = _watch_on(tmp_path)
    worker("w1", "joining")
    agent("ray_started")
    watch.follow(_table("aa", True))
    assert run.read()["nodes"]["node2"]["job"] == "w1"
    assert run.read()["jobs"]["w1"]["state"] == "joined"
    run.update_job("w1", state="draining")
    agent("stopped", reason="stop requested: drained")
    watch.follow(_table("aa", False, "AUTOSCALER_DRAIN_PREEMPTED: hpcray: hpcray shrink"))
    assert "released" in run.read()["nodes"]["node2"]
    run.update_job("w1", state="ended")

    worker("w2", "joining")
    agent("ray_started")
    watch.follow({**_table("aa", False, "AUTOSCALER_DRAIN_PREEMPTED"), **_table("bb", True)})
    entry = run.read()["nodes"]["node2"]
    assert entry["job"] == "w2" and "released" not in entry, entry
    assert run.read()["jobs"]["w2"]["state"] == "joined"
    agent("stopped", reason="SIGTERM")
    watch.follow({**_table("aa", False), **_table("bb", False, "EXPECTED_TERMINATION")})
    assert run.read()["nodes"]["node2"]["released_reason"] == "SIGTERM"
    assert run.read().get("nodes_lost", []) == []


def test_a_cancelled_worker_node_is_classified_once_its_agent_has_said_how_it_ended(tmp_path):
    """Ray sees the raylet gone (SIGTERM from the step) before the agent has stopped: no
    verdict then; once the agent says it stopped on the signal, released, never lost. A
    node whose agent failed is lost."""
    run, watch, worker, agent = _watch_on(tmp_path)
    worker("w1", "joining")
    agent("ray_started")
    watch.follow(_table("aa", True))
    watch.follow(_table("aa", False, "EXPECTED_TERMINATION: received SIGTERM"))
    entry = run.read()["nodes"]["node2"]
    assert "released" not in entry and "lost" not in entry, entry
    agent("stopped", reason="SIGTERM")
    watch.follow(_table("aa", False, "EXPECTED_TERMINATION: received SIGTERM"))
    assert "released" in run.read()["nodes"]["node2"]
    assert run.read().get("nodes_lost", []) == []

    worker("w2", "joining")
    agent("ray_started")
    watch.follow(_table("bb", True))
    agent("failed", error="ray start exited with code 1")
    watch.follow(_table("bb", False, "UNEXPECTED_TERMINATION"))
    assert "lost" in run.read()["nodes"]["node2"]
    assert run.read()["nodes_lost"] == ["node2"]


def test_a_job_state_never_goes_back(tmp_path):
    run, watch, worker, agent = _watch_on(tmp_path)
    worker("w1", "joining")
    run.update_job("w1", state="ended")  # its `hpcray up` ended before the watch looked
    agent("ray_started")
    watch.follow(_table("aa", True))
    assert run.read()["jobs"]["w1"]["state"] == "ended"
