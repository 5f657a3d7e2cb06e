"""A relay on the local site (allocation.relay): the walltime warning mid-stage hands the run
to a successor process that waits for the first job's to end (the local scheduler's
dependency), which resumes the same run directory: the stage's unfinished tasks run, the
finished ones do not, the service is deployed again and answers the resumed driver. The same
on the real Slurm: tests/slurm/test_relay.py."""

from __future__ import annotations

import json
import os
import signal

import pytest

import hpcray
from hpcray.rundir import read_json
from hpcray.stages.records import read_attempts
from tests.conftest import FIXTURES, assert_nothing_left_of, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TASKS, FIRST = 6, 3
WORKFLOW = f"""\
name: relay-local
allocation: {{nodes: 1, walltime: 10m, relay: {{max_jobs: 2}}}}
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


def test_a_run_continues_in_a_second_local_job(run_root):
    path = FIXTURES / "stages" / "relay-local.yaml"
    path.write_text(WORKFLOW)
    try:
        sub = hpcray.submit(path, run_root=run_root)
    finally:
        path.unlink()
    run = sub.run_dir

    def first_tasks_done_rest_held() -> bool:
        work = read_json(run / "run.json", {}).get("stages", {}).get("work", {})
        return work.get("done") == FIRST and work.get("running") == TASKS - FIRST

    assert wait_until(first_tasks_done_rest_held, 240), hpcray.logs(run)
    first = read_json(run / "run.json")
    os.kill(first["up_pid"], signal.SIGUSR2)  # the local site's walltime warning
    assert wait_until(lambda: read_json(run / "run.json")["jobs"]["main"]["state"]
                      == "relayed", 120), hpcray.logs(run)
    between = hpcray.status(run)
    assert between.state in ("relaying", "bootstrapping", "running") and not between.finished
    (run / "relay-gate").write_text("")  # the held tasks may finish now, in the second job
    st = hpcray.wait(run, timeout=300)
    assert st.state == "completed", hpcray.logs(run) + (run / "jobs/r1/job.out").read_text()
    data = read_json(run / "run.json")
    main, r1 = data["jobs"]["main"], data["jobs"]["r1"]
    assert (main["state"], r1["role"], r1["state"], r1["end_state"]) == (
        "relayed", "successor", "ended", "completed")
    assert r1["after"] == main["job_id"] == first["job_id"] and data["job_id"] == r1["job_id"]
    assert r1["started"] > main["ended"]  # held until the first job had ended
    done = [a for a in read_attempts(run, "work") if a["state"] == "done"]
    assert sorted(a["index"] for a in done) == list(range(TASKS))
    effects = {int(p.name): [json.loads(line) for line in p.read_text().splitlines()]
               for p in (run / "effects").iterdir()}
    assert {i: len(lines) for i, lines in effects.items()} == {i: 1 for i in range(TASKS)}
    assert {i: lines[0]["resumed"] for i, lines in effects.items()} == {
        i: i >= FIRST for i in range(TASKS)}
    answer = json.loads((run / "driver-result.json").read_text())
    assert (answer["answer"], answer["resumed"], answer["env_resumed"]) == ("relayed", True, "1")
    assert r1["services_ready"] <= answer["time"] and main["teardown_end"] <= r1["started"]
    assert data["stages"]["work"]["skipped"] == FIRST
    assert_nothing_left_of(run)
    assert_nothing_left_of_first_job(run)


def assert_nothing_left_of_first_job(run) -> None:
    from tests.conftest import ray_processes

    cluster = read_json(run / "jobs" / "main" / "plan.json")["cluster_id"]
    assert cluster != read_json(run / "plan.json")["cluster_id"]
    assert wait_until(lambda: not ray_processes(cluster), 30)
