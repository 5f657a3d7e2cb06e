"""`hpcray up`'s parts without Ray: how a run ends, what it records, the signals and the node
watch. Processes and Ray are faked; the real thing runs in tests/integration."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from hpcray import api
from hpcray.bootstrap import up, workload
from hpcray.bootstrap.nodewatch import NodeWatch
from hpcray.bootstrap.plan import ClusterPlan, NodePlan
from hpcray.bootstrap.shutdown import Shutdown
from hpcray.bootstrap.signals import Stop, install_handlers, start_walltime_timer
from hpcray.errors import BootstrapError, ServiceError, StageError
from hpcray.rundir import RunDir, write_json_atomic
from hpcray.state import RunState

pytestmark = pytest.mark.timeout(60)

WORKFLOW = """\
name: parts
allocation: {nodes: 1, walltime: "00:10:00"}
services:
  - {name: echo, deployment: noop}
stages:
  - {name: sq, command: ["true"]}
driver: {command: ["true"]}
"""


@pytest.fixture
def cluster_up(tmp_path, monkeypatch):
    """A ClusterUp for a prepared run whose bring-up and teardown are faked: no processes,
    no signal handlers of the test process replaced, no walltime timer left running."""
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    run, _ = api.prepare(path, site="local", run_root=tmp_path / "runs")
    torn_down: list[object] = []
    monkeypatch.setattr(up, "install_handlers", lambda stop: None)
    monkeypatch.setattr(up, "start_walltime_timer", lambda *args: None)
    monkeypatch.setattr(up, "importable", lambda paths: None)
    monkeypatch.setattr(up.ClusterUp, "_bring_up", lambda self, t0: (None, {}))
    monkeypatch.setattr(Shutdown, "__call__", lambda self, plan, services: torn_down.append(
        self.stop.reason))
    cup = up.ClusterUp(run)
    cup.torn_down = torn_down
    return cup


def fail_with(exc: Exception, before=lambda: None):
    def raiser(*args, **kwargs):
        before()
        raise exc
    return raiser


def test_a_service_failure_is_recorded_with_its_type(cluster_up, monkeypatch, caplog):
    monkeypatch.setattr(workload.Services, "start",
                        fail_with(ServiceError("service 'echo' failed to start")))
    with caplog.at_level(logging.ERROR, logger="hpcray.up"):
        assert cluster_up() == 1
    record = cluster_up.run.record()
    assert record.state is RunState.FAILED
    assert record.error == "services: service 'echo' failed to start"  # the text as before
    assert record.error_type == "ServiceError"
    assert "services: service 'echo' failed to start" in caplog.messages
    assert cluster_up.torn_down == [None]  # torn down all the same


def test_a_stage_failure_while_cancelled_ends_cancelled(cluster_up, monkeypatch):
    monkeypatch.setattr(workload.Services, "start", lambda *args: None)
    monkeypatch.setattr(up, "run_stages", fail_with(
        StageError("stage sq: stopped"), before=lambda: cluster_up.stop.set(RunState.CANCELLED)))
    assert cluster_up() == 1
    record = cluster_up.run.record()
    assert (record.state, record.error, record.error_type) == (
        RunState.CANCELLED, "stages: stage sq: stopped", "StageError")


def test_a_lost_head_fails_the_run_even_when_the_failure_comes_later(cluster_up, monkeypatch):
    monkeypatch.setattr(workload.Services, "start", fail_with(
        BootstrapError("no cluster"), before=lambda: cluster_up.stop.head_lost("n0")))
    assert cluster_up() == 1
    # the state is a run state, never the stop's reason ("head node n0 lost")
    assert cluster_up.run.record().state is RunState.FAILED


@pytest.mark.parametrize(("reason", "driver_code", "expected"), [
    (None, 0, (RunState.COMPLETED, None, 0)),
    (None, None, (RunState.COMPLETED, None, 0)),
    (RunState.WALLTIME, -15, (RunState.WALLTIME, None, 0)),
    (RunState.CANCELLED, None, (RunState.CANCELLED, None, 0)),
    ("head node n0 lost", 0, (RunState.FAILED, "head node n0 lost", 1)),
    (None, 3, (RunState.FAILED, "driver exited with code 3: Boom: it broke", 1)),
])
def test_how_a_run_ends(cluster_up, reason, driver_code, expected):
    if reason:
        cluster_up.stop.set(reason)
    cluster_up.driver.tail.extend([b"Traceback\n", b"Boom: it broke\n", b"\n"])
    assert cluster_up._end_state(driver_code) == expected


def test_a_driver_that_ends_records_its_state(cluster_up, monkeypatch):
    monkeypatch.setattr(workload.Services, "start", lambda *args: None)
    monkeypatch.setattr(up, "run_stages", lambda *args: None)
    monkeypatch.setattr(cluster_up.driver, "run_to_end", lambda plan, head, env: 0)
    assert cluster_up() == 0
    record = cluster_up.run.record()
    assert (record.state, record.error, record.error_type) == (RunState.COMPLETED, None, None)
    assert {"job_started", "finished"} <= set(record.times)


def test_a_missing_resolved_json_fails_the_run_with_its_type(tmp_path):
    run = RunDir(tmp_path / "run").create()
    assert up.main(str(run.path)) == 1
    record = run.record()
    assert (record.state, record.error_type) == (RunState.FAILED, "BootstrapError")
    assert "resolved.json missing" in (record.error or "")


@pytest.mark.parametrize(("signum", "reason"), [
    (signal.SIGUSR2, RunState.WALLTIME), (signal.SIGTERM, RunState.CANCELLED),
    (signal.SIGHUP, RunState.CANCELLED)])
def test_signals_stop_the_run_with_their_reason(signum, reason):
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT,
                                                     signal.SIGHUP, signal.SIGUSR2)}
    stop = Stop()
    try:
        install_handlers(stop)
        os.kill(os.getpid(), signum)
        assert stop.event.wait(10)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert stop.reason == reason and stop.end_state is reason


def test_the_walltime_clock_stops_the_run():
    stop = Stop()
    timer = start_walltime_timer(stop, walltime=60, warning=60)
    assert stop.event.wait(10)
    timer.join(10)
    assert stop.end_state is RunState.WALLTIME


def test_the_first_reason_wins():
    stop = Stop()
    stop.set(RunState.CANCELLED)
    stop.head_lost("n0")
    assert stop.end_state is RunState.CANCELLED and not stop.is_head_lost


def _plan(names: list[str]) -> ClusterPlan:
    return ClusterPlan(cluster_id="hpcray-test-1-1", job_id="1", scheduler="local",
                       gpu_vendor="nvidia", token_path="/nonexistent",
                       nodes=[NodePlan(n, i, 1, 0) for i, n in enumerate(names)])


def test_the_node_watch_stops_the_run_when_the_head_agent_stops(tmp_path):
    run = RunDir(tmp_path).create()
    stop = Stop()
    write_json_atomic(run.node_state_file("n0"), {"state": "stopped", "reason": "ray exited"})
    NodeWatch(run, _plan(["n0", "n1"]), stop, {}, interval=0.01).start()
    assert stop.event.wait(10)
    assert stop.reason == "head node n0 lost" and stop.end_state is RunState.FAILED
    record = run.record()
    assert record.nodes_lost == ["n0"] and record.nodes["n0"]["lost_reason"] == "ray exited"


def test_teardown_asks_the_agents_to_stop_and_records_it(tmp_path):
    run = RunDir(tmp_path).create()
    stop = Stop()
    stop.set(RunState.WALLTIME)
    Shutdown(run, stop, launched=[], grace=0)(plan=None, services=None)
    assert run.stop_file.read_text() == "walltime\n"
    assert {"teardown_start", "teardown_end"} <= set(run.record().times)


def test_up_keeps_its_entry_points():
    from hpcray.bootstrap.resolved import load_resolved

    assert up.load_resolved is load_resolved and callable(up.main)
    assert Path(up.__file__).read_text().count("\n") < 200


def test_an_early_driver_runs_only_when_let_go_with_what_the_services_published(monkeypatch):
    """bootstrap/call.py's gate: the environment written on the pipe is the driver's; a pipe
    closed without it (the run ended first) means the driver does not run."""
    import os

    from hpcray.bootstrap.call import wait_at_gate

    monkeypatch.setenv("HPCRAY_ENDPOINTS", "before")
    read_end, write_end = os.pipe()
    os.write(write_end, b'{"HPCRAY_ENDPOINTS": "/run/endpoints.json"}\n')
    os.close(write_end)
    assert wait_at_gate(read_end) is True
    assert os.environ["HPCRAY_ENDPOINTS"] == "/run/endpoints.json"
    read_end, write_end = os.pipe()
    os.close(write_end)
    assert wait_at_gate(read_end) is False
