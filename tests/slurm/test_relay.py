"""A relay on the real test Slurm (docs/elastic.md#relay-past-the-walltime): the first job
gets the walltime signal (`scancel --batch --signal=USR2`) mid-stage, submits its successor
held by `--dependency=afterany:<its id>`, drains and ends; the successor resumes the same
run: every task of the stage ends done exactly once across the two jobs, and the service,
deployed again, answers the resumed driver. Tasks hold at a gate file
(tests/fixtures/stages/relayfns.py) until the first job has handed over, so which tasks each
job ran is known."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import hpcray
from hpcray.rundir import read_json
from hpcray.stages.records import read_attempts
from tests.conftest import FIXTURES, ray_processes, wait_until
from tests.slurm.test_slurm import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(400)]

TASKS, FIRST = 8, 3
WORKFLOW = f"""\
name: relayed
allocation: {{nodes: 2, walltime: 10m, gpus_per_node: 0, relay: {{max_jobs: 2}}}}
ray: {{object_store_memory: 100000000, teardown_grace: 5}}
services:
  - {{name: noop, deployment: noop, resources: {{cpus: 0.1}}}}
stages:
  - name: work
    function: relayfns:gated
    args: {{first: {FIRST}}}
    each: {{items: {list(range(TASKS))}}}
    resources: {{cpus: 0.1}}
driver:
  function: relayfns:answer
"""


def clusters(run: Path) -> list[str]:
    """The cluster ids of every job of the run that brought a cluster up."""
    plans = [run / "plan.json", *sorted((run / "jobs").glob("*/plan.json"))]
    return [c for c in (read_json(p, {}).get("cluster_id") for p in plans) if c]


@pytest.fixture
def runs(slurm_cluster):
    """Runs of a test; every job of theirs (the successor too) is cancelled and every
    process of both clusters killed, even if the test fails."""
    started: list[Path] = []
    yield started
    for run in started:
        for entry in (read_json(run / "run.json", {}) or {}).get("jobs", {}).values():
            if entry.get("job_id"):
                subprocess.run(["scancel", str(entry["job_id"])], capture_output=True,
                               timeout=30)
        for cluster in clusters(run):
            wait_until(lambda c=cluster: not ray_processes(c), 30)
            for proc in ray_processes(cluster):
                proc.kill()


def test_a_run_continues_past_the_walltime_in_a_second_job(slurm_cluster, run_root, runs):
    path = FIXTURES / "stages" / "relay-slurm.yaml"
    path.write_text(WORKFLOW)
    try:
        sub = submit(path, run_root, runs)
    finally:
        path.unlink()
    run = sub.run_dir

    def first_tasks_done_rest_held() -> bool:
        work = read_json(run / "run.json", {}).get("stages", {}).get("work", {})
        return work.get("done") == FIRST and work.get("running") == TASKS - FIRST

    assert wait_until(first_tasks_done_rest_held, 240), hpcray.logs(run)
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", sub.job_id)
    assert wait_until(lambda: read_json(run / "run.json")["jobs"].get("main", {}).get(
        "state") == "relayed", 120), hpcray.logs(run)
    data = read_json(run / "run.json")
    successor = data["jobs"]["r1"]["job_id"]
    assert f"#SBATCH --dependency=afterany:{sub.job_id}\n" in (
        run / "jobs" / "r1" / "job.sh").read_text()
    assert hpcray.status(run).state in ("relaying", "bootstrapping", "running")
    (run / "relay-gate").write_text("")  # the held tasks may finish now, in the second job
    st = hpcray.wait(run, timeout=240)
    assert st.state == "completed", hpcray.logs(run)
    assert slurm_cluster.wait_job(sub.job_id) == "COMPLETED"  # drained, handed over, exited 0
    assert slurm_cluster.wait_job(successor) == "COMPLETED"
    data = read_json(run / "run.json")
    main, r1 = data["jobs"]["main"], data["jobs"]["r1"]
    assert (main["role"], main["state"], r1["role"], r1["state"], r1["end_state"]) == (
        "main", "relayed", "successor", "ended", "completed")
    assert data["job_id"] == successor and r1["after"] == sub.job_id
    # what the relay gap is measured from: the first job's end, the second's services ready
    assert main["started"] < main["teardown_end"] <= main["ended"] < r1["started"] \
        < r1["services_ready"] == data["times"]["services_ready"]
    # every task done exactly once across the two jobs; the held ones in the second
    done = [a for a in read_attempts(run, "work") if a["state"] == "done"]
    assert sorted(a["index"] for a in done) == list(range(TASKS))
    assert sorted(a["index"] for a in done if a["finished"] < main["ended"]) == \
        list(range(FIRST))
    effects = {int(p.name): [json.loads(line) for line in p.read_text().splitlines()]
               for p in (run / "effects").iterdir()}
    assert {i: len(lines) for i, lines in effects.items()} == {i: 1 for i in range(TASKS)}
    assert {i: lines[0]["resumed"] for i, lines in effects.items()} == {
        i: i >= FIRST for i in range(TASKS)}
    # the service, deployed again, answered the resumed driver in the second job
    answer = json.loads((run / "driver-result.json").read_text())
    assert (answer["answer"], answer["resumed"]) == ("relayed", True)
    assert answer["time"] > r1["services_ready"]
    assert [(j.tag, j.state) for j in st.jobs] == [("main", "relayed"), ("r1", "ended")]
    assert "  job r1 (successor, " in st.summary()
    # nothing of either job left running
    assert len(clusters(run)) == 2
    for cluster in clusters(run):
        assert wait_until(lambda c=cluster: not ray_processes(c), 30), cluster
