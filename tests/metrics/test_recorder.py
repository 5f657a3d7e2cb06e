"""The in-memory counters behind the metrics: numbers of threads that ended are kept, their
objects are not (a replica runs a thread per synchronous stream; clients come and go)."""

from __future__ import annotations

import json
import threading

import pytest

from hpcray.metrics.recorder import ClientMetrics, ReplicaStats


def _in_threads(n: int, work) -> None:
    for _ in range(n):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()


def test_a_replicas_threads_that_ended_are_counted_once_and_let_go():
    stats = ReplicaStats()

    def work() -> None:
        part = stats.for_thread()
        for _ in range(10):
            part.observe(30_000, 10_000)
        part.errors += 1

    _in_threads(50, work)
    first = stats.snapshot()
    assert first["service_seconds"]["count"] == 500 and first["errors"] == 50
    assert stats._parts._parts == []  # folded into one object
    stats.for_thread().observe(30_000, 10_000)  # this thread, still running
    again = stats.snapshot()
    assert again["service_seconds"]["count"] == 501 and again["errors"] == 50
    assert len(stats._parts._parts) == 1
    assert again["inference_seconds"]["sum"] == pytest.approx(501 * 10_000 * 1e-9)


def test_a_clients_threads_that_ended_are_counted_once_and_an_idle_client_writes_nothing(
        tmp_path):
    metrics = ClientMetrics(tmp_path)

    def work() -> None:
        part = metrics.stats_for("echo")
        for _ in range(4):
            part.observe(0.001, (100_000, 100_000, 100_000))

    _in_threads(25, work)
    metrics._stop.set()  # the writer thread: this test writes itself
    metrics.write()
    written = json.loads(metrics.path.read_text())
    assert written["services"]["echo"]["communication_seconds"]["count"] == 100
    assert metrics._services["echo"]._parts == []
    metrics.path.unlink()
    metrics.write()  # nothing new: no write
    assert not metrics.path.exists()
    metrics.stats_for("echo").observe(0.001, (1, 1, 1))
    metrics.write()
    assert json.loads(metrics.path.read_text())["services"]["echo"][
        "communication_seconds"]["count"] == 101


def test_a_stopped_replicas_final_numbers_stay_for_the_report(tmp_path):
    """A service a driver starts and stops itself is gone before the teardown keeps Ray's
    events: its replicas' last numbers must outlive them, out of the live samples."""
    from hpcray.bootstrap.events import replica_samples
    from hpcray.metrics.recorder import ReplicaStats
    from hpcray.metrics.usage import RequestCounter
    from tests.conftest import wait_until

    stats = ReplicaStats()
    stats.for_thread().observe(40_000, 20_000)
    counter = RequestCounter(str(tmp_path), "cls", "r1", "n0", served=lambda: 7, stats=stats)
    live = tmp_path / "metrics" / "replicas" / "cls" / "r1.json"
    try:
        assert wait_until(live.exists, 30)
    finally:
        counter.stop()
    assert not live.exists()  # no longer counted as running
    kept = replica_samples(tmp_path)["cls"]["r1"]
    assert kept["stopped"] and kept["served"] == 7
    assert kept["inference_seconds"]["count"] == 1
