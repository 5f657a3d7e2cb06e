"""Per-service autoscaling: the `autoscaling:` entry, the scaling decision (delays and
bounds, as Serve's default policy), and on a real Ray cluster with Serve (one for the module,
simulated GPUs): the direct path scaled by hpcray under 16 clients with nothing lost or run
twice while replicas come and go, a scale-down that frees a GPU a waiting stage task takes,
and the Serve path scaled by Serve's own autoscaler."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from hpcray.errors import ResourceError
from hpcray.services.autoscale import (
    Pending,
    decide,
    desired_replicas,
    read_log,
    replicas_over_time,
)
from hpcray.spec import loads_workflow
from hpcray.spec.services import AutoscalingSpec, ServiceSpec
from tests.conftest import FIXTURES, wait_until

# -- the entry -------------------------------------------------------------------------------


def svc(**fields) -> ServiceSpec:
    return ServiceSpec(name="m", deployment="noop", **fields)


def test_replicas_start_at_min_and_must_lie_within_the_bounds():
    assert svc(autoscaling={"min_replicas": 2, "max_replicas": 4}).replicas == 2
    assert svc(replicas=3, autoscaling={"min_replicas": 2, "max_replicas": 4}).replicas == 3
    auto = svc(autoscaling={"max_replicas": 4}).autoscaling
    # Serve's defaults
    assert (auto.min_replicas, auto.target_ongoing_requests, auto.upscale_delay,
            auto.downscale_delay) == (1, 2.0, 30.0, 600.0)
    again = ServiceSpec.model_validate(svc(autoscaling={"max_replicas": 4}).model_dump(
        mode="json"))  # through resolved.json and the directory
    assert again.replicas == 1 and again.autoscaling == auto


@pytest.mark.parametrize("fields, message", [
    ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}},
     r"max_replicas \(2\) is below min_replicas \(3\)"),
    ({"autoscaling": {"min_replicas": 1}}, r"autoscaling.max_replicas\n  Field required"),
    ({"autoscaling": {"max_replicas": 2, "target_ongoing_requests": 0}},
     r"autoscaling.target_ongoing_requests\n  Input should be greater than 0"),
    ({"autoscaling": {"max_replicas": 2, "upscale_delay": -1}},
     r"autoscaling.upscale_delay\n  Input should be greater than or equal to 0"),
    ({"autoscaling": {"max_replicas": 2, "lookback": 3}}, r"autoscaling.lookback\n  Extra"),
    ({"replicas": 5, "autoscaling": {"max_replicas": 4}},
     r"replicas: 5 \(the starting count\) is outside autoscaling's \[1, 4\]"),
    ({"autoscaling": {"min_replicas": 0, "max_replicas": 2}},
     r"autoscaling.min_replicas: at least 1 on the direct path"),
    ({"autoscaling": {"max_replicas": 2},
      "remote": [{"url": "http://h:1/v1", "kind": "openai", "model": "x"}]},
     "autoscaling: not together with remote endpoints"),
])
def test_bad_entries_name_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        svc(**fields)


def test_the_serve_path_may_scale_to_zero_but_starts_with_one():
    spec = svc(transport="serve", autoscaling={"min_replicas": 0, "max_replicas": 2})
    assert spec.replicas == 1 and spec.floor == 0 and spec.ceiling == 2


def test_an_impossible_max_fails_before_submission_and_services_may_share():
    def workflow(services: str) -> str:
        return ("name: a\nallocation: {nodes: 1, cpus_per_node: 2}\nservices:\n" + services)

    import hpcray

    big = ("  - {name: a, deployment: noop, resources: {cpus: 0.5},\n"
           "     autoscaling: {max_replicas: 5}}\n")
    with pytest.raises(ResourceError, match=r"services.0.autoscaling.max_replicas: service 'a' "
                                            r"at its 5 replicas x 0.5 needs 2.5 CPUs"):
        hpcray.script(loads_workflow(workflow(big), "a.yaml"), "local")
    # two services that may each grow to both CPUs while the other is at its 1 replica
    both = "".join(f"  - {{name: {n}, deployment: noop, resources: {{cpus: 0.5}}, "
                   "autoscaling: {max_replicas: 3}}\n" for n in ("a", "b"))
    assert "hpcray up" in hpcray.script(loads_workflow(workflow(both), "a.yaml"), "local")
    fixed = "  - {name: c, deployment: noop, replicas: 2, resources: {cpus: 0.5}}\n"
    with pytest.raises(ResourceError, match="service 'a' at its 3 replicas x 0.5 needs 3 CPUs"):
        hpcray.script(loads_workflow(workflow(both + fixed), "a.yaml"), "local")


def test_serve_gets_its_own_autoscaling_config_and_no_fixed_count():
    from ray import serve

    from hpcray.services.manager import replica_count_options
    from hpcray.services.replica import ReplicaHost

    spec = svc(transport="serve", replicas=2, autoscaling={
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3,
        "upscale_delay": 1, "downscale_delay": 5})
    options = replica_count_options(spec)
    assert options == {"autoscaling_config": {
        "min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
        "target_ongoing_requests": 3.0, "upscale_delay_s": 1.0, "downscale_delay_s": 5.0}}
    config = serve.deployment(ReplicaHost, **options)._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas, config.initial_replicas,
            config.target_ongoing_requests, config.upscale_delay_s,
            config.downscale_delay_s) == (1, 4, 2, 3.0, 1.0, 5.0)
    # the direct path: a count hpcray's autoscaler changes
    assert replica_count_options(svc(autoscaling={"max_replicas": 4})) == {"num_replicas": 1}


# -- the decision ----------------------------------------------------------------------------

POLICY = AutoscalingSpec(min_replicas=1, max_replicas=4, target_ongoing_requests=2,
                         upscale_delay=2, downscale_delay=10)


@pytest.mark.parametrize("ongoing, want", [(0, 1), (1, 1), (2, 1), (2.5, 2), (4, 2), (5, 3),
                                           (8, 4), (100, 4)])
def test_desired_is_ongoing_over_target_within_the_bounds(ongoing, want):
    assert desired_replicas(ongoing, POLICY) == want


def test_a_desire_must_hold_its_delay_before_the_count_changes():
    d = decide(1, 8, POLICY, now=100.0, pending=None)
    assert (d.replicas, d.desired, d.pending) == (1, 4, Pending(True, 100.0))
    d = decide(1, 6, POLICY, now=101.0, pending=d.pending)  # still up: the same start
    assert (d.replicas, d.pending) == (1, Pending(True, 100.0))
    d = decide(1, 6, POLICY, now=102.0, pending=d.pending)  # held 2 s: to what it asks now
    assert (d.replicas, d.desired, d.pending) == (3, 3, None)
    # a dip in between starts the wait over
    d = decide(1, 8, POLICY, now=200.0, pending=None)
    d = decide(1, 1, POLICY, now=201.0, pending=d.pending)
    assert (d.replicas, d.pending) == (1, None)
    d = decide(1, 8, POLICY, now=201.5, pending=d.pending)
    d = decide(1, 8, POLICY, now=203.0, pending=d.pending)
    assert d.replicas == 1 and d.pending == Pending(True, 201.5)


def test_down_waits_downscale_delay_and_a_rise_cancels_it():
    d = decide(4, 0, POLICY, now=0.0, pending=None)
    assert (d.replicas, d.desired, d.pending) == (4, 1, Pending(False, 0.0))
    d = decide(4, 8, POLICY, now=5.0, pending=d.pending)  # the load is back: no scale-down
    assert (d.replicas, d.pending) == (4, None)
    d = decide(4, 2, POLICY, now=6.0, pending=d.pending)
    d = decide(4, 2, POLICY, now=15.9, pending=d.pending)
    assert d.replicas == 4
    assert decide(4, 2, POLICY, now=16.0, pending=d.pending).replicas == 1
    # no delay: at once; outside the bounds by hand: back within them
    quick = POLICY.model_copy(update={"upscale_delay": 0.0})
    assert decide(1, 3, quick, now=0.0, pending=None).replicas == 2
    assert decide(6, 100, POLICY, now=0.0, pending=None).pending == Pending(False, 0.0)


def test_replica_counts_over_time_from_the_records():
    records = [{"time": 1.0, "to": 1, "live": 1}, {"time": 2.0, "to": 3, "live": 1},
               {"time": 2.5, "to": 3, "live": 1}, {"time": 4.0, "to": 3, "live": 3}]
    assert replicas_over_time(records) == [(1.0, 1, 1), (2.0, 3, 1), (4.0, 3, 3)]


# -- on a real cluster -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Ray cluster with Serve for this module's tests: 4 CPUs and 2 simulated GPUs;
    replicas keep request ledgers in a run directory (HPCRAY_LEDGER)."""
    import ray
    from ray import serve

    from hpcray.services.direct.directory import directory

    run_dir = tmp_path_factory.mktemp("run")
    services = str(FIXTURES / "services")
    sys.path.insert(0, services)  # the user classes, imported here too (arguments checked)
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, runtime_env={"env_vars": {
        "PYTHONPATH": services, "HPCRAY_RUN_DIR": str(run_dir), "HPCRAY_LEDGER": "1",
        # Serve's autoscaler hears of the load every 0.5 s, not 10 (the Serve path's test)
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}})
    try:
        yield run_dir
    finally:
        try:
            serve.shutdown()
            found = directory()
            if found is not None:
                ray.kill(found)
        finally:
            ray.shutdown()
            sys.path.remove(services)


def _manager(spec: ServiceSpec, run_dir: Path):
    from hpcray.rundir import RunDir
    from hpcray.services.manager import ServiceManager

    return ServiceManager([spec], run=RunDir(run_dir), workflow_dir=str(FIXTURES / "services"))


class Load:
    """Client threads calling `work` (held `seconds` on the replica) until told to stop, each
    call's outcome in a client ledger; a call that times out is a loss."""

    def __init__(self, handle, clients: int, seconds: float, prefix: str) -> None:
        from hpcray.services.ledger import ClientLedger

        self.handle, self.seconds = handle, seconds
        self.ledgers = [ClientLedger(f"{prefix}{k}") for k in range(clients)]
        self.stops = [threading.Event() for _ in range(clients)]
        self.by_replica: dict[str, int] = {}
        self.answers: list[tuple[float, str]] = []  # (when, by which replica)
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                        for k in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        while not self.stops[k].is_set():
            reply = self.ledgers[k].call(self.handle.call, "work", self.seconds, timeout=120)
            if reply is not None:
                self.by_replica[reply.replica] = self.by_replica.get(reply.replica, 0) + 1
                self.answers.append((time.time(), reply.replica))

    def stop(self, clients: range | None = None) -> None:
        for k in clients if clients is not None else range(len(self.stops)):
            self.stops[k].set()
        for k in clients if clients is not None else range(len(self.stops)):
            self.threads[k].join(timeout=180)
            assert not self.threads[k].is_alive(), "a client thread hangs"


def _events(manager, name: str, event: str) -> list[dict]:
    return [r for r in manager.autoscaling(name) if r["event"] == event]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_direct_path_scales_to_max_under_16_clients_and_back_losing_nothing(cluster):
    """16 clients: the replicas reach max_replicas and each takes work; then 15 stop and one
    keeps calling while the service goes back to min_replicas, so requests are in flight on
    the replicas being drained. Both ledgers agree: every request answered once, executed
    once by the replica that answered, none timed out."""
    from hpcray.rundir import read_json
    from hpcray.services.handle import ServiceHandle
    from hpcray.services.ledger import read_executed, reconcile

    name = "auto"
    spec = ServiceSpec(name=name, deployment="userclasses:Sleepy",
                       resources={"cpus": 0.1}, drain_timeout=60, autoscaling={
                           "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
                           "upscale_delay": 0.5, "downscale_delay": 2})
    manager = _manager(spec, cluster)
    load = None
    try:
        manager.start()
        record = manager.records[name]
        assert wait_until(lambda: record.live == 1 and record.target == 1, 60)
        handle = ServiceHandle(name)
        load = Load(handle, 16, 0.05, "c")
        assert wait_until(lambda: record.live == 3, 240), manager.autoscaling(name)
        assert record.target == 3
        # every replica takes work once it is there (the clients follow the directory)
        assert wait_until(lambda: len(handle.direct.replicas) == 3 and all(
            load.by_replica.get(r, 0) >= 5 for r in handle.direct.replicas), 120), \
            (load.by_replica, handle.direct.replicas)
        up = _events(manager, name, "scale")
        assert up and up[0]["from"] == 1 and up[-1]["to"] == 3, up
        # what asked for it: the replicas' own queues, more than 2 per replica
        assert all(r["ongoing"] > 2 * r["from"] for r in up), up
        first = set(load.by_replica)
        load.stop(range(2, 16))  # two go on (2 ongoing: 1 replica): scaled down under load
        assert wait_until(lambda: record.live == 1 and record.target == 1, 240), \
            manager.autoscaling(name)
        survivor = handle.direct.replicas
        assert len(survivor) == 1
        served = load.by_replica.get(survivor[0], 0)
        assert wait_until(lambda: load.by_replica.get(survivor[0], 0) >= served + 5, 60)
        load.stop()
        executed = read_executed(cluster, name)
        ledger = reconcile(load.ledgers, executed)
        print(f"autoscaled direct path, ledger: {ledger.summary()}")
        assert ledger.problems() == [] and ledger.lost == 0, ledger.summary()
        assert ledger.failed == {} and ledger.answered == ledger.sent, ledger.summary()
        assert ledger.executed == ledger.sent  # server side: each received and run once
        # the replicas that were drained executed requests too (they were not idle)
        drained = first - set(survivor)
        assert len(drained) == 2 and all(load.by_replica[r] > 0 for r in drained)
        down = _events(manager, name, "scale")[len(up):]
        assert down and down[-1]["to"] == 1 and all(r["to"] < r["from"] for r in down), down
        assert down[0]["time"] - up[-1]["time"] >= 2  # downscale_delay held first
        late = sum(1 for t, r in load.answers if r in drained and t >= down[0]["time"])
        print(f"answered by the drained replicas after the scale-down decision: {late}")
        # the same records in the run directory, and the count where `hpcray status` reads
        assert read_log(cluster, name)[-len(manager.autoscaling(name)):] == \
            manager.autoscaling(name)
        entry = read_json(cluster / "run.json")["services"][name]
        assert (entry["autoscaling"], entry["target"], entry["live"]) == ("1-3", 1, 1)
        # by hand, within the bounds only
        from hpcray.errors import ServiceError

        with pytest.raises(ServiceError, match=r"4 replicas is outside its autoscaling bounds "
                                               r"\[1, 3\]"):
            manager.scale(name, 4)
    finally:
        if load is not None:
            load.stop()
        manager.stop(shutdown=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_scale_down_frees_a_gpu_that_a_waiting_stage_task_takes(cluster, tmp_path):
    """Two replicas hold both (simulated) GPUs while load keeps them; a stage task that needs
    one GPU waits; the load stops, the service goes down to one replica after
    downscale_delay, and the task runs on the GPU given back."""
    import ray

    from hpcray.rundir import RunDir
    from hpcray.services.handle import ServiceHandle
    from hpcray.spec.stages import StageSpec
    from hpcray.stages.runner import StageRunner

    name = "gpu"
    spec = ServiceSpec(name=name, deployment="userclasses:Sleepy", replicas=2,
                       resources={"cpus": 0.1, "gpus": 1}, autoscaling={
                           "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                           "upscale_delay": 0, "downscale_delay": 1})
    manager = _manager(spec, cluster)
    load = runner_thread = None
    out = tmp_path / "stage.json"
    try:
        manager.start()
        load = Load(ServiceHandle(name), 4, 0.05, "g")  # keeps desired at 2
        assert wait_until(lambda: ray.available_resources().get("GPU", 0) == 0, 60)
        runner = StageRunner([StageSpec(name="train", function="autoscale_stage:hold_gpu",
                                        args={"out": str(out)},
                                        resources={"cpus": 0.1, "gpus": 1})],
                             RunDir(cluster), FIXTURES / "services")
        result: dict = {}
        runner_thread = threading.Thread(target=lambda: result.update(runner.run()),
                                         daemon=True)
        runner_thread.start()
        # the task is submitted, and waits: both replicas hold a GPU each, as long as the
        # load keeps them (it cannot have started: its file is written when it does)
        assert wait_until(lambda: bool(runner.inflight), 60)
        assert manager.records[name].live == 2 and manager.records[name].target == 2
        assert not out.exists()
        asked_at = time.time()
        load.stop()  # idle: one replica goes after downscale_delay
        assert wait_until(out.exists, 180), manager.autoscaling(name)
        runner_thread.join(timeout=60)
        assert result["train"]["done"] == 1, result
        seen = json.loads(out.read_text())
        down = [r for r in _events(manager, name, "scale")
                if r["to"] == 1 and r["time"] >= asked_at]
        assert down, manager.autoscaling(name)
        assert seen["started"] >= down[0]["time"]  # only once the service gave a GPU back
        assert len(seen["gpu_ids"]) == 1
        assert manager.records[name].live == 1
    finally:
        if load is not None:
            load.stop()
        if runner_thread is not None and runner_thread.is_alive():
            runner.stop.set()  # a task still waiting is cancelled
            runner_thread.join(timeout=60)
        manager.stop(shutdown=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_serve_path_is_scaled_by_serve_and_recorded(cluster):
    """Serve's own autoscaler, given the entry as `autoscaling_config`, adds a replica under
    load and removes it after; hpcray records the counts it reaches; `scale` by hand is
    refused with the reason."""
    from hpcray.errors import ServiceError
    from hpcray.services.handle import ServiceHandle
    from hpcray.services.manager import scale

    name = "viaserve"
    spec = ServiceSpec(name=name, deployment="userclasses:Sleepy", transport="serve",
                       resources={"cpus": 0.1}, max_ongoing_requests=8, autoscaling={
                           "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                           "upscale_delay": 0, "downscale_delay": 1})
    manager = _manager(spec, cluster)
    load = None
    try:
        manager.start()
        record = manager.records[name]
        with pytest.raises(ServiceError, match="is scaled by Serve's autoscaler"):
            scale(name, 2)
        load = Load(ServiceHandle(name), 6, 0.05, "s")
        assert wait_until(lambda: record.live == 2, 240), manager.autoscaling(name)
        load.stop()
        assert wait_until(lambda: record.live == 1, 240), manager.autoscaling(name)
        from hpcray.services.ledger import read_executed, reconcile

        ledger = reconcile(load.ledgers, read_executed(cluster, name))
        assert ledger.problems() == [] and not ledger.failed, ledger.summary()
        counts = [(r["to"], r["live"]) for r in manager.autoscaling(name) if r["event"] == "live"]
        assert (2, 2) in counts and counts[-1] == (1, 1), counts
    finally:
        if load is not None:
            load.stop()
        manager.stop(shutdown=False)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_run_started_by_hpcray_up_autoscales_and_status_shows_it(tmp_path, run_root):
    """The workflow's own service, started by `hpcray up`: its ServiceManager runs the
    autoscaler; the driver sees `hpcray status` go to the maximum and back; the decisions are
    in the run directory."""
    import hpcray
    from tests.conftest import ONE_NODE, run_beside

    text = (f"name: autoscale\n{ONE_NODE}services:\n"
            "  - {name: auto, deployment: 'userclasses:Sleepy', resources: {cpus: 0.1},\n"
            "     autoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 2,\n"
            "                   upscale_delay: 0.5, downscale_delay: 1}}\n"
            "driver:\n  function: drive_autoscale:main\n  args: {service: auto, most: 2}\n")
    sub, st = run_beside("services", tmp_path.name, text, run_root, timeout=360)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    out = json.loads((sub.run_dir / "driver-result.json").read_text())
    assert "(2/2 replicas, autoscaling 1-2)" in out["at_most"], out
    assert "(1/1 replicas, autoscaling 1-2)" in out["at_least"], out
    assert out["failed"] == [] and out["answered"] > 0
    scales = [(r["from"], r["to"]) for r in read_log(sub.run_dir, "auto")
              if r["event"] == "scale"]
    assert scales[0] == (1, 2) and scales[-1] == (2, 1), scales
    assert "autoscaling 1-2" in st.summary()
