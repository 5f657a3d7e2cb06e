"""The order of a run's teardown of its services, without a cluster: every application is
asked to go before anything waits (the stop is parallel), then the wait, then Serve's end.
What the calls do is tested against real Serve in test_service_runs.py."""

from __future__ import annotations

import pytest

from hpcray.services import manager as manager_module
from hpcray.services.manager import ServiceManager
from hpcray.spec.services import ServiceSpec
from hpcray.state import ServiceState


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple] = []
    monkeypatch.setattr(manager_module, "delete_app",
                        lambda app, wait=True: seen.append(("delete", app, wait)))
    monkeypatch.setattr(ServiceManager, "_wait_deleted",
                        lambda self, apps: seen.append(("wait", frozenset(apps))))
    import ray.serve

    monkeypatch.setattr(ray.serve, "shutdown", lambda: seen.append(("shutdown",)))
    return seen


def started(names: list[str]) -> ServiceManager:
    manager = ServiceManager([ServiceSpec(name=n, deployment="noop") for n in names])
    for record in manager.records.values():
        record.state = ServiceState.READY
    return manager


def test_all_deleted_before_any_wait_then_serve_ends(calls):
    manager = started(["a", "b", "c"])
    manager.records["c"].state = ServiceState.EXPIRED  # already gone: not deleted again
    manager.stop(shutdown=True, wait=True)
    apps = ["hpcray-a", "hpcray-b"]
    assert calls == [("delete", "hpcray-a", False), ("delete", "hpcray-b", False),
                     ("wait", frozenset(apps)), ("shutdown",)]
    assert manager.records["a"].state == ServiceState.STOPPED
    assert manager.records["c"].state == ServiceState.EXPIRED


def test_a_driver_s_own_services_and_a_lost_node(calls):
    started(["a", "b"]).stop(shutdown=False)  # hpcray.serving: Serve stays for the run
    assert calls == [("delete", "hpcray-a", False), ("delete", "hpcray-b", False),
                     ("wait", frozenset({"hpcray-a", "hpcray-b"}))]
    calls.clear()
    started(["a"]).stop(shutdown=False, wait=False)  # after a lost node: no waiting at all
    assert calls == [("delete", "hpcray-a", False)]
