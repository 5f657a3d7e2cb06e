"""The relay's state machine without Ray (allocation.relay, bootstrap/relay.py): when a job
submits its successor, what the run records as it hands over, how the successor takes the
run directory over, and what status, wait and cancel make of a run between two jobs. Jobs
are real local processes (a `sleep` stands for a queued successor); the whole relay runs in
tests/integration/test_relay_local.py and on Slurm in tests/slurm/test_relay.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpcray import api, env
from hpcray.bootstrap import jobs, relay, up, workload
from hpcray.bootstrap.relay import Relay, refusal, take_over
from hpcray.bootstrap.shutdown import Shutdown
from hpcray.bootstrap.signals import Stop
from hpcray.errors import SchedulerError, StageError
from hpcray.runcontext import context
from hpcray.rundir import RunDir, write_json_atomic
from hpcray.schedulers import get_scheduler
from hpcray.state import ALIVE, TERMINAL, JobPhase, JobRole, RunState
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

WORKFLOW = """\
name: relayed
allocation: {nodes: 1, walltime: "00:10:00", relay: {max_jobs: MAX}}
stages:
  - {name: sq, command: ["true"]}
"""


def prepared(tmp_path: Path, max_jobs: int = 2, relay_spec: bool = True) -> RunDir:
    """A run directory as submit leaves it, its main job a process of ours (job id local-<pid>
    of this test process, alive for the test)."""
    path = tmp_path / "wf.yaml"
    text = WORKFLOW.replace("MAX", str(max_jobs))
    path.write_text(text if relay_spec else text.replace(", relay: {max_jobs: 2}", ""))
    run, _ = api.prepare(path, site="local", run_root=tmp_path / "runs")
    run.mark("submitted")
    run.update(job_id=f"local-{os.getpid()}", state=RunState.RUNNING)
    run.update_job(jobs.MAIN, role=JobRole.MAIN, job_id=f"local-{os.getpid()}",
                   state=JobPhase.JOINED, nodes=1, submitted=time.time())
    return run


@pytest.fixture
def submitted(monkeypatch):
    """jobs.submit_job replaced: records each call and the successor as the real one does."""
    calls: list[dict] = []

    def fake(run, role, *, after_job=None, reason="", **_):
        tag = jobs.next_tag(run, role)
        calls.append({"role": role, "after_job": after_job, "tag": tag})
        run.update_job(tag, role=role, state=JobPhase.SUBMITTED, after=after_job,
                       submitted=time.time(), job_id="4242")
        return tag, "4242"
    monkeypatch.setattr(jobs, "submit_job", fake)
    return calls


def started(run: RunDir, stop: Stop, job: str = jobs.MAIN) -> Relay:
    from hpcray.bootstrap.resolved import load_resolved

    r = Relay(run, load_resolved(run)[0], job, stop)
    r.start(time.time())
    return r


def warned(r: Relay, stop: Stop, reason: str = RunState.WALLTIME) -> None:
    stop.set(reason)
    assert r._thread is not None
    r._thread.join(10)


def test_the_walltime_warning_submits_the_successor_held_after_this_job(tmp_path, submitted):
    run = prepared(tmp_path)
    stop = Stop()
    r = started(run, stop)
    assert submitted == []  # nothing before the warning
    warned(r, stop)
    assert submitted == [{"role": JobRole.SUCCESSOR, "after_job": f"local-{os.getpid()}",
                          "tag": "r1"}]
    assert run.read()["jobs"]["main"]["state"] == JobPhase.DRAINING
    state = r.record_end(RunState.WALLTIME, "stages: stages stopped before they finished",
                         "StageError")
    record = run.record()
    assert state == record.state == RunState.RELAYING
    assert record.state not in TERMINAL and record.state not in ALIVE
    assert (record.job_id, record.error, record.error_type) == ("4242", None, None)
    assert "relayed" in record.times and "finished" not in record.times
    main = record.jobs["main"]
    assert main["state"] == JobPhase.RELAYED and main["successor"] == "r1"
    assert main["ended"] >= main["started"] and "submitted" in main["times"]
    assert record.jobs["r1"]["state"] == JobPhase.SUBMITTED


@pytest.mark.parametrize("reason", [RunState.CANCELLED, "head node n0 lost", "driver failed"])
def test_no_successor_unless_the_walltime_stopped_the_run(tmp_path, submitted, reason):
    run = prepared(tmp_path)
    stop = Stop()
    r = started(run, stop)
    warned(r, stop, reason)
    assert submitted == []
    assert r.record_end(RunState.CANCELLED, None, None) == RunState.CANCELLED
    assert run.record().state == RunState.CANCELLED


def test_the_last_job_of_the_relay_ends_in_walltime(tmp_path, submitted):
    run = prepared(tmp_path, max_jobs=2)
    run.update_job("r1", role=JobRole.SUCCESSOR, job_id="11", submitted=time.time(),
                   state=JobPhase.JOINED)
    from hpcray.bootstrap.resolved import load_resolved

    assert refusal(load_resolved(run)[0], run) == \
        "the relay's 2 jobs have run (allocation.relay.max_jobs)"
    stop = Stop()
    r = started(run, stop, job="r1")
    warned(r, stop)
    assert submitted == []
    assert r.record_end(RunState.WALLTIME, None, None) == RunState.WALLTIME
    record = run.record()
    assert record.state == RunState.WALLTIME and record.error is None
    assert record.jobs["r1"]["state"] == JobPhase.ENDED


def test_without_relay_nothing_is_submitted(tmp_path, submitted):
    run = prepared(tmp_path, relay_spec=False)
    stop = Stop()
    r = started(run, stop)
    assert r._thread is None
    stop.set(RunState.WALLTIME)
    assert r.record_end(RunState.WALLTIME, None, None) == RunState.WALLTIME
    assert submitted == []


def test_a_refused_submission_ends_the_run_in_walltime_saying_why(tmp_path, monkeypatch):
    run = prepared(tmp_path)

    def refuse(*args, **kwargs):
        raise SchedulerError("sbatch: error: QOSMaxSubmitJobPerUserLimit")
    monkeypatch.setattr(jobs, "submit_job", refuse)
    stop = Stop()
    r = started(run, stop)
    warned(r, stop)
    assert r.record_end(RunState.WALLTIME, None, None) == RunState.WALLTIME
    record = run.record()
    assert record.state == RunState.WALLTIME
    assert record.error == ("relay: no successor job: sbatch: error: "
                            "QOSMaxSubmitJobPerUserLimit")
    assert record.error_type == "SchedulerError"


def sleeper() -> subprocess.Popen:
    """A process standing for a queued job (local-<pid>)."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_a_run_cancelled_while_draining_cancels_its_successor(tmp_path, monkeypatch):
    run = prepared(tmp_path)
    queued = sleeper()

    def submit(run_, role, *, after_job=None, reason="", **_):
        run_.update_job("r1", role=role, state=JobPhase.SUBMITTED, submitted=time.time(),
                        job_id=f"local-{queued.pid}")
        return "r1", f"local-{queued.pid}"
    monkeypatch.setattr(jobs, "submit_job", submit)
    stop = Stop()
    r = started(run, stop)
    warned(r, stop)
    run.mark(relay.CANCEL_MARK)  # hpcray cancel while the job drains
    try:
        assert r.record_end(RunState.WALLTIME, None, None) == RunState.CANCELLED
        assert queued.wait(10) == -signal.SIGTERM
    finally:
        queued.kill()
    record = run.record()
    assert record.state == RunState.CANCELLED and record.job_id == f"local-{os.getpid()}"
    assert record.jobs["r1"]["state"] == JobPhase.ENDED
    assert record.jobs["r1"]["end_reason"] == "cancelled with the run"


def stale_cluster_files(run: RunDir) -> None:
    """What the previous job's cluster left: its head, plan, node states, stop file."""
    write_json_atomic(run.head, {"address": "10.0.0.1:6379", "time": 1.0})
    write_json_atomic(run.plan, {"cluster_id": "old"})
    write_json_atomic(run.node_state_file("n0"), {"state": "stopped"})
    run.stop_file.write_text("walltime\n")
    (run.path / "ray-events").mkdir()
    (run.path / "ray-events" / "meta.json").write_text("{}")


def test_the_successor_moves_the_previous_cluster_aside_and_starts_afresh(tmp_path):
    run = prepared(tmp_path)
    run.mark("job_started")
    run.mark("services_ready")
    run.update(state=RunState.RELAYING, job_id="4242", nodes_lost=["n1"],
               nodes={"n0": {"joined": 1.0}}, error=None)
    run.update_job("main", state=JobPhase.RELAYED)
    run.update_job("r1", role=JobRole.SUCCESSOR, job_id="4242", state=JobPhase.SUBMITTED,
                   submitted=time.time())
    stale_cluster_files(run)
    assert take_over(run, "r1") == 1
    for gone in (run.head, run.plan, run.stop_file, run.node_state_file("n0"),
                 run.path / "ray-events"):
        assert not gone.exists(), gone
    kept = run.jobs_dir / "main"
    assert json.loads((kept / "head.json").read_text())["address"] == "10.0.0.1:6379"
    assert (kept / "stop").read_text() == "walltime\n"
    assert (kept / "nodes" / "n0.json").exists() and (kept / "ray-events" / "meta.json").exists()
    assert run.nodes.is_dir()
    record = run.record()
    assert record.state == RunState.BOOTSTRAPPING and record.job_id == "4242"
    assert set(record.times) == {"submitted"}  # this job's events are recorded afresh
    assert record.nodes_lost == [] and record.nodes == {}


def test_a_successor_of_a_job_killed_before_it_recorded_the_relay(tmp_path):
    run = prepared(tmp_path)
    run.mark("job_started")
    run.update_job("main", state=JobPhase.DRAINING)
    run.update_job("r1", role=JobRole.SUCCESSOR, job_id="4242", state=JobPhase.SUBMITTED,
                   submitted=time.time())
    assert take_over(run, "r1") == 1
    main = run.record().jobs["main"]
    assert main["state"] == JobPhase.RELAYED and "killed" in main["end_reason"]
    assert "job_started" in main["times"]  # what it had recorded is kept with it


@pytest.mark.parametrize("how", ["cancelled", "cancel requested"])
def test_a_successor_of_an_ended_run_does_nothing(tmp_path, how):
    run = prepared(tmp_path)
    if how == "cancelled":
        run.update(state=RunState.CANCELLED)
    else:
        run.update(state=RunState.RELAYING)
        run.mark(relay.CANCEL_MARK)
    run.update_job("r1", role=JobRole.SUCCESSOR, job_id="4242", state=JobPhase.SUBMITTED,
                   submitted=time.time())
    stale_cluster_files(run)
    assert take_over(run, "r1") is None
    assert run.head.exists()  # nothing touched
    assert run.record().jobs["r1"]["state"] == JobPhase.ENDED


def test_a_job_that_is_no_successor_is_refused(tmp_path):
    run = prepared(tmp_path)
    with pytest.raises(Exception, match="not a relay successor"):
        take_over(run, "r7")


# -- ClusterUp: the steps of `hpcray up` wired to the relay -------------------------------------

@pytest.fixture
def cluster_up(tmp_path, monkeypatch, submitted):
    """A main job of a relayed run with bring-up and teardown faked (as tests/bootstrap/
    test_up.py's), its stages stopped by the walltime warning."""
    run = prepared(tmp_path)
    monkeypatch.setattr(up, "install_handlers", lambda stop: None)
    monkeypatch.setattr(up, "start_walltime_timer", lambda *args: None)
    monkeypatch.setattr(up, "importable", lambda paths: None)
    monkeypatch.setattr(up.ClusterUp, "_bring_up", lambda self, t0: (None, {}))
    monkeypatch.setattr(Shutdown, "__call__", lambda self, plan, services: None)
    monkeypatch.setattr(workload.Services, "start", lambda *args: None)
    cup = up.ClusterUp(run, env={})

    def stopped(*args):
        cup.stop.set(RunState.WALLTIME)
        assert cup.relay._thread is not None
        cup.relay._thread.join(10)  # the successor is submitted while the stages drain
        raise StageError("stages stopped before they finished")
    monkeypatch.setattr(up, "run_stages", stopped)
    return cup


def test_hpcray_up_hands_the_run_over_at_the_walltime_warning(cluster_up, submitted):
    assert cluster_up() == 0
    record = cluster_up.run.record()
    assert record.state == RunState.RELAYING and record.job_id == "4242"
    assert [c["tag"] for c in submitted] == ["r1"]
    assert record.jobs["main"]["state"] == JobPhase.RELAYED


def test_a_successor_tells_its_processes_the_run_is_resumed(tmp_path, monkeypatch):
    run = prepared(tmp_path)
    run.update(state=RunState.RELAYING, job_id="4242")
    run.update_job("main", state=JobPhase.RELAYED)
    run.update_job("r1", role=JobRole.SUCCESSOR, job_id="4242", state=JobPhase.SUBMITTED,
                   submitted=time.time())
    seen: dict[str, str] = {}
    monkeypatch.setattr(up, "install_handlers", lambda stop: None)
    monkeypatch.setattr(up, "start_walltime_timer", lambda *args: None)
    monkeypatch.setattr(up, "importable", lambda paths: None)
    monkeypatch.setattr(up.ClusterUp, "_bring_up", lambda self, t0: (None, {}))
    monkeypatch.setattr(Shutdown, "__call__", lambda self, plan, services: None)
    monkeypatch.setattr(up, "run_stages", lambda run_, wf, d, env_, *a: seen.update(env_))
    cup = up.ClusterUp(run, env={}, job="r1")
    monkeypatch.setattr(cup.driver, "run_to_end", lambda plan, head, env_: 0)
    assert cup() == 0
    assert seen[env.RESUMED] == "1"
    record = run.record()
    assert record.state == RunState.COMPLETED
    assert record.jobs["r1"]["state"] == JobPhase.ENDED
    assert record.jobs["r1"]["end_state"] == RunState.COMPLETED


def test_context_says_whether_the_run_is_resumed(monkeypatch):
    monkeypatch.delenv(env.RESUMED, raising=False)
    assert context().resumed is False
    monkeypatch.setenv(env.RESUMED, "1")
    assert context().resumed is True and context().jobs_before == 1
    monkeypatch.setenv(env.RESUMED, "junk")
    assert context().resumed is False


# -- status, wait and cancel between two jobs ---------------------------------------------------

def relaying(tmp_path: Path, successor: subprocess.Popen | None) -> RunDir:
    run = prepared(tmp_path)
    job_id = f"local-{successor.pid}" if successor else "local-999999999"
    run.update(state=RunState.RELAYING, job_id=job_id)
    run.update_job("main", state=JobPhase.RELAYED, started=time.time() - 60,
                   ended=time.time() - 1)
    run.update_job("r1", role=JobRole.SUCCESSOR, job_id=job_id, state=JobPhase.SUBMITTED,
                   submitted=time.time(), nodes=1)
    return run


def test_status_follows_the_successor_while_relaying(tmp_path):
    queued = sleeper()
    try:
        run = relaying(tmp_path, queued)
        st = api.status(run.path)
        assert st.state == RunState.RELAYING and not st.finished
        assert st.job_id == f"local-{queued.pid}" and st.scheduler_state == "running"
        assert [(j.tag, j.role, j.state) for j in st.jobs] == [
            ("main", "main", "relayed"), ("r1", "successor", "submitted")]
        lines = st.summary().splitlines()
        assert lines[0].endswith(": relaying")
        main = run.record().jobs["main"]
        span = "-".join(time.strftime("%H:%M:%S", time.localtime(main[k]))
                        for k in ("started", "ended"))
        assert lines[1] == f"  job main (main, local-{os.getpid()}): relayed, 1 node(s), {span}"
        assert lines[2] == f"  job r1 (successor, local-{queued.pid}): submitted, 1 node(s)"
        assert [j["tag"] for j in st.to_dict()["jobs"]] == ["main", "r1"]
    finally:
        queued.kill()
        queued.wait()
    # the successor ended without taking the run over: lost
    assert api.status(run.path).state == RunState.LOST


def test_a_job_killed_at_its_walltime_after_submitting_its_successor_is_relaying(tmp_path):
    queued = sleeper()
    try:
        run = prepared(tmp_path)
        run.update(job_id="local-999999999")  # gone, never recorded its end
        run.update_job("r1", role=JobRole.SUCCESSOR, job_id=f"local-{queued.pid}",
                       state=JobPhase.SUBMITTED, submitted=time.time())
        st = api.status(run.path)
        assert (st.state, st.job_id) == (RunState.RELAYING, f"local-{queued.pid}")
    finally:
        queued.kill()
        queued.wait()
    assert api.status(run.path).state == RunState.LOST


def test_without_a_successor_a_vanished_job_is_still_lost(tmp_path):
    run = prepared(tmp_path)
    run.update(job_id="local-999999999")
    assert api.status(run.path).state == RunState.LOST


def test_cancel_between_two_jobs_cancels_the_successor(tmp_path):
    queued = sleeper()
    try:
        run = relaying(tmp_path, queued)
        st = api.cancel(run.path, wait_s=10)
        assert st.state == RunState.CANCELLED
        assert queued.wait(10) == -signal.SIGTERM
    finally:
        queued.kill()
    assert run.record().jobs["r1"]["state"] == JobPhase.ENDED


# -- the local scheduler's dependency -------------------------------------------------------------

def test_a_local_job_held_after_another_starts_once_that_one_is_gone(tmp_path):
    """The local site has no batch system: a successor's process waits for its predecessor's
    (here a child of this test, left a zombie when it ends: not reaped yet, still gone)."""
    local = get_scheduler("local")
    before = subprocess.Popen(["sleep", "60"])
    marker = tmp_path / "ran"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n{local.directive_prefix} "
                      f"{local.dependency(f'local-{before.pid}')}\ntouch {marker}\n")
    assert f"# local: after=local-{before.pid}\n" in script.read_text()
    job = local.submit(script, tmp_path)
    try:
        time.sleep(1.5)
        assert not marker.exists() and local.state(job).value == "running"
        os.kill(before.pid, signal.SIGKILL)  # not waited for: a zombie
        assert wait_until(marker.exists, 10)
    finally:
        before.kill()
        before.wait()
    with pytest.raises(SchedulerError):
        local.dependency("12345.pbs01")
