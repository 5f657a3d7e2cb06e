"""Per-service autoscaling. On the Serve path Serve's own autoscaler does it (the manager
passes `autoscaling_config`); on the direct path requests never pass Serve's router, so Serve
never sees them, and this module does it instead: a thread per service, started by the
ServiceManager that started the service (`hpcray up`'s for the workflow's services, a
driver's for its own), asks each replica what it holds now (queue depth + in flight, in the
answer to a ping over the replica's own socket: fresh, and never queued behind requests),
decides as Serve's default policy does, and changes the count through the same call as
`hpcray.services.scale`. Every decision is logged (logger `hpcray.autoscale`) and appended to
`<run>/metrics/autoscale/<service>.jsonl`; on the Serve path the thread only records the
replica count Serve reaches, into the same file."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcray.spec.services import AutoscalingSpec, ServiceSpec

log = logging.getLogger("hpcray.autoscale")

INTERVAL_S = 0.25  # how often the load is asked for (direct path)
LOOK_BACK_S = 1.0  # the load decided on: the mean of the samples this recent
PING_TIMEOUT_S = 1.0  # a replica that does not answer a ping this fast is left out once
SERVE_INTERVAL_S = 1.0  # how often Serve's replica count is read (Serve path)
_EPS_S = 1e-3  # as Serve's: a delay that has elapsed up to rounding has elapsed


def log_path(run_dir: str | Path, service: str) -> Path:
    """Where a service's autoscaling records go."""
    return Path(run_dir, "metrics", "autoscale", f"{service}.jsonl")


def read_log(run_dir: str | Path, service: str) -> list[dict[str, Any]]:
    """A service's autoscaling records, oldest first (for benchmarks and reports): each has
    `time` (epoch s), `event` (start, wait, cancel, scale, live, stop), `from`/`to` (target
    replicas), `live` (replicas taking requests), `ongoing` and `desired`."""
    path = log_path(run_dir, service)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replicas_over_time(records: list[dict[str, Any]]) -> list[tuple[float, int, int]]:
    """(time, target replicas, live replicas) at each record that changed either: a step
    function to plot against a load."""
    out: list[tuple[float, int, int]] = []
    for r in records:
        point = (r["time"], r["to"], r["live"])
        if not out or out[-1][1:] != point[1:]:
            out.append(point)
    return out


@dataclass(frozen=True)
class Pending:
    """A desire to scale (up or down) and since when it has held."""

    up: bool
    since: float


@dataclass(frozen=True)
class Decision:
    replicas: int  # the count to have now: the current one, or `desired` once its delay held
    desired: int  # what the load asks for, within [min_replicas, max_replicas]
    pending: Pending | None  # a desire that has not held long enough yet


def desired_replicas(ongoing: float, policy: AutoscalingSpec) -> int:
    """ceil(ongoing / target_ongoing_requests), within [min_replicas, max_replicas]."""
    want = math.ceil(ongoing / policy.target_ongoing_requests - 1e-9)
    return min(policy.max_replicas, max(policy.min_replicas, want))


def decide(current: int, ongoing: float, policy: AutoscalingSpec, now: float,
           pending: Pending | None) -> Decision:
    """Serve's default policy's delay logic (ray.serve.autoscaling_policy): a desire to scale
    up (down) must hold for upscale_delay (downscale_delay) seconds in a row before the count
    changes, to what the load asks for then; a desire the other way, or none, starts over."""
    desired = desired_replicas(ongoing, policy)
    if desired == current:
        return Decision(current, desired, None)
    up = desired > current
    if pending is None or pending.up != up:
        pending = Pending(up, now)
    delay = policy.upscale_delay if up else policy.downscale_delay
    if now - pending.since + _EPS_S >= delay:
        return Decision(desired, desired, None)
    return Decision(current, desired, pending)


class Autoscaler:
    """One service's autoscaling thread. `scale(n)` changes the count (the manager's
    `scale`); `changed(target, live)` is told each new count (run.json, `hpcray status`)."""

    def __init__(self, spec: ServiceSpec, directory: Any, scale: Callable[[int], None],
                 run_dir: str | Path | None = None,
                 changed: Callable[[int, int], None] | None = None) -> None:
        assert spec.autoscaling is not None
        self.spec = spec
        self.policy: AutoscalingSpec = spec.autoscaling
        self.directory = directory
        self._scale = scale
        self._changed = changed or (lambda target, live: None)
        self.path = log_path(run_dir, spec.name) if run_dir else None
        self.records: list[dict[str, Any]] = []  # also kept here: a run without a run dir
        self.target = spec.replicas
        self.live = 0
        self._pending: Pending | None = None
        self._samples: deque[tuple[float, float]] = deque()
        self._errors = 0  # looks at the load that failed in a row
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hpcray-autoscale-{spec.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """No more decisions (before the service is deleted: nothing scales a service that
        is going away)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- records ---------------------------------------------------------------------------
    def record(self, event: str, to: int, reason: str, ongoing: float | None = None,
               desired: int | None = None) -> None:
        """One decision or change: logged, kept, and appended to the service's file."""
        entry = {"time": time.time(), "service": self.spec.name, "event": event,
                 "from": self.target, "to": to, "live": self.live, "ongoing": ongoing,
                 "desired": desired, "reason": reason}
        self.records.append(entry)
        level = logging.DEBUG if event in ("wait", "cancel") else logging.INFO
        log.log(level, "service %s: %s %d -> %d (%d live, ongoing %s): %s", self.spec.name,
                event, self.target, to, self.live,
                "-" if ongoing is None else f"{ongoing:g}", reason)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as out:
                    out.write(json.dumps(entry) + "\n")
            except OSError:  # the run dir is gone: the run is over
                self.path = None

    # -- the loop ----------------------------------------------------------------------------
    def _trouble(self) -> None:
        """A look that failed: logged the first time and then seldom, never fatal."""
        self._errors += 1
        if self._errors == 1 or self._errors % 100 == 0:
            log.warning("service %s: autoscaling could not look at the load (%d time(s) in "
                        "a row)", self.spec.name, self._errors, exc_info=True)

    def _run(self) -> None:
        try:
            if self.spec.transport == "direct":
                self._run_direct()
            else:
                self._run_serve()
        except Exception:  # noqa: BLE001 - logged; the service keeps its count
            log.exception("service %s: autoscaling stopped", self.spec.name)
            self.record("stop", self.target, "failed: see the log")

    def _run_direct(self) -> None:
        from hpcray.services.direct.client import DirectClient, open_replicas

        client = DirectClient(self.spec.name, directory=self.directory, watch=True)
        try:
            self.live = len(open_replicas(client.table))
            policy = self.policy
            self.record("start", self.target, f"autoscaling {policy.min_replicas}-"
                        f"{policy.max_replicas}, target {policy.target_ongoing_requests:g} "
                        "ongoing per replica")
            self._changed(self.target, self.live)
            while not self._stop.wait(INTERVAL_S):
                try:
                    if not self._declared():
                        break
                    self.step(client, time.time())
                except Exception:  # noqa: BLE001 - a bad moment (Ray busy): the next look
                    self._trouble()
                    continue
                self._errors = 0
        finally:
            client.close()
        self.record("stop", self.target, "the service stops")

    def _declared(self) -> bool:
        """The count as declared now (a `scale` call by hand moves it too); False once the
        service is gone."""
        import ray

        declared = ray.get(self.directory.declared.remote(self.spec.name), timeout=30)
        if declared["spec"] is None:
            return False
        self.target = int(declared["spec"]["replicas"])
        return True

    def sample(self, client: Any) -> float | None:
        """Requests the service's replicas hold now (queued + in flight), summed over those
        that answered a ping; None if none did."""
        from hpcray.errors import ServiceCallError
        from hpcray.services.direct.client import open_replicas

        total, answered = 0, 0
        for replica in open_replicas(client.table):
            try:
                total += int(client.ping(replica, timeout=PING_TIMEOUT_S).get("in_flight", 0))
                answered += 1
            except ServiceCallError as exc:  # starting, or just gone: the next sample has it
                log.debug("service %s: replica %s: %s", self.spec.name, replica, exc)
        return float(total) if answered else None

    def step(self, client: Any, now: float) -> None:
        """One look at the load, and what follows from it."""
        from hpcray.services.direct.client import open_replicas

        live = len(open_replicas(client.table))
        if live != self.live:
            self.live = live
            self.record("live", self.target, f"{live} replica(s) take requests")
            self._changed(self.target, live)
        ongoing = self.sample(client)
        if ongoing is None:
            return
        self._samples.append((now, ongoing))
        while self._samples and self._samples[0][0] < now - LOOK_BACK_S:
            self._samples.popleft()
        mean = sum(v for _, v in self._samples) / len(self._samples)
        before = self._pending
        got = decide(self.target, mean, self.policy, now, before)
        self._pending = got.pending
        if got.replicas != self.target:
            delay = (self.policy.upscale_delay if got.replicas > self.target
                     else self.policy.downscale_delay)
            reason = (f"{mean:g} ongoing asks for {got.desired} (target "
                      f"{self.policy.target_ongoing_requests:g} per replica) for {delay:g}s")
            self._scale(got.replicas)  # recorded once done (a refusal is logged instead)
            self.record("scale", got.replicas, reason, mean, got.desired)
            self.target = got.replicas
            self._changed(self.target, self.live)
        elif got.pending is not None and (before is None or before.up != got.pending.up):
            self.record("wait", self.target, f"{mean:g} ongoing asks for {got.desired}; "
                        f"waiting {'upscale' if got.pending.up else 'downscale'}_delay", mean,
                        got.desired)
        elif before is not None and got.pending is None:
            self.record("cancel", self.target, f"{mean:g} ongoing asks for {got.desired} "
                        "again", mean, got.desired)

    def _run_serve(self) -> None:
        """Serve scales the service; record the count it reaches."""
        from ray import serve

        from hpcray.services.names import app_name

        self.live = self.target  # published: all started replicas answered
        self.record("start", self.target, f"Serve's autoscaling {self.policy.min_replicas}-"
                    f"{self.policy.max_replicas}")
        self._changed(self.target, self.live)
        while not self._stop.wait(SERVE_INTERVAL_S):
            try:
                app = serve.status().applications.get(app_name(self.spec.name))
            except Exception:  # noqa: BLE001 - the controller busy: the next look
                self._trouble()
                continue
            self._errors = 0
            if app is None:
                break
            deployment = app.deployments.get(self.spec.name)
            if deployment is None:
                continue
            states = {getattr(k, "value", str(k)): n for k, n in deployment.replica_states.items()}
            live = states.get("RUNNING", 0)
            target = live + states.get("STARTING", 0)  # what Serve is bringing up counts
            if (live, target) != (self.live, self.target):
                self.live = live
                self.record("live", target, f"Serve's replicas: {states}")
                self.target = target
                self._changed(target, live)
        self.record("stop", self.target, "the service stops")
