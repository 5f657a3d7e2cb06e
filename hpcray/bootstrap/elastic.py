"""In the main job's `hpcray up`: the run's worker jobs seen from its cluster, and (with the
workflow's `elastic:` section) the controller that grows and shrinks the run by itself.

Following: a worker job's nodes are recorded in run.json when Ray's control store shows them
(`nodes.<name>.job`, `jobs.<tag>.state` joined); a node that leaves is *released* when its
job was drained, reached its walltime or was cancelled, *lost* only when its agent failed or
it died with nobody asking.

Adapting: what Ray's autoscaler would read (the resource shapes waiting for a node, each
node's idle time) decides. Work that a node of a worker job could take, waiting longer than
`grow_after`, submits enough worker jobs for it, within `max_jobs`; a worker job whose nodes
have all sat idle for `idle_after` is released. Every decision is a line in
<run>/elastic.jsonl with its reason (docs/elastic.md#adapt)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from hpcray.bootstrap import jobs
from hpcray.bootstrap.signals import Stop
from hpcray.rundir import RunDir, read_json
from hpcray.runtime import raycompat
from hpcray.runtime.placement import node_resource
from hpcray.sites import SiteProfile
from hpcray.spec import Workflow
from hpcray.spec.models import ElasticSpec
from hpcray.state import NODE_ENDED, JobPhase, JobRole, NodeState

log = logging.getLogger("hpcray.elastic")

DECISIONS = "elastic.jsonl"
# what a fresh node of a worker job offers: a shape asking for anything else (another node's
# label, a custom resource) cannot be helped by growing
_GROWABLE = {"CPU", "GPU", "memory", "object_store_memory"}
_LEFT_OF_ITSELF = ("SIG", "stop requested", "hpcray up is gone")


def decisions(run: RunDir) -> list[dict[str, Any]]:
    """The elastic controller's decisions, oldest first (a line still being written is
    left out)."""
    path = run.path / DECISIONS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def nodes_wanted(pending: list[tuple[dict[str, float], int]], cpus: int,
                 gpus: int) -> tuple[int, list[tuple[dict[str, float], int]]]:
    """How many fresh nodes (`cpus`, `gpus` each) the waiting shapes need, and which shapes
    such a node can hold at all. A shape no node of the site can hold is left out: growing
    does not help it."""
    growable = [(shape, n) for shape, n in pending
                if set(shape) <= _GROWABLE and shape.get("CPU", 0) <= cpus
                and shape.get("GPU", 0) <= gpus and n > 0]
    if not growable:
        return 0, []
    need_cpu = sum(shape.get("CPU", 0) * n for shape, n in growable)
    need_gpu = sum(shape.get("GPU", 0) * n for shape, n in growable)
    return max(1, math.ceil(need_cpu / cpus) if cpus else 0,
               math.ceil(need_gpu / gpus) if gpus else 0), growable


def jobs_to_submit(nodes_needed: int, spec: ElasticSpec, starting: int, running: int) -> int:
    """Worker jobs to submit now: enough for what waits, less those already on their way,
    within `max_jobs` (jobs not yet ended, draining ones included, count)."""
    wanted = math.ceil(nodes_needed / spec.nodes_per_job) - starting
    return max(0, min(wanted, spec.max_jobs - starting - running))


class ElasticWatch:
    """The main job's view of its worker jobs and, with `elastic:`, the controller: one
    daemon thread, closed before the teardown (no job is submitted after the run's end)."""

    def __init__(self, run: RunDir, workflow: Workflow, site: SiteProfile,
                 request: dict[str, Any], head: dict[str, Any], stop: Stop,
                 job_started: float) -> None:
        self.run = run
        self.spec = workflow.elastic
        self.workflow = workflow
        self.site = site
        self.head = head
        self.stop = stop
        self.job_started = job_started
        self.cpus = int(workflow.allocation.cpus_per_node or request["cpus_per_node"])
        self.gpus = int(request["gpus_per_node"])
        self.warning = int(request.get("walltime_warning") or 120)
        self.interval = self.spec.interval if self.spec else 1.0
        # a node left by a signal is classified once its agent says how it ended, or after
        # the agent's own teardown time
        self.settle_s = workflow.ray.teardown_grace + 30
        # keyed by (job tag, node name): a released host can come back in a later job
        self.joined: dict[tuple[str, str], str] = {}   # -> its Ray NodeID
        self.left: set[tuple[str, str]] = set()
        self.dying: dict[tuple[str, str], float] = {}  # first seen gone, not yet classified
        self.waiting_since: float | None = None
        self.refused_until = 0.0
        self.asked_scheduler = 0.0
        self.said: set[str] = set()
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self._loop, name="hpcray-elastic", daemon=True)
        self.thread.start()
        return self.thread

    def close(self, timeout: float = 30) -> None:
        self.closed.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _loop(self) -> None:
        client = None
        while (not self.closed.wait(self.interval) and not self.stop.event.is_set()
               and not self.run.stop_file.exists()):
            try:
                if client is None:
                    client = raycompat.gcs_client(self.head["address"])
                self.follow(raycompat.gcs_nodes(client))
                self._ask_scheduler()
                if self.spec is not None and not self.closed.is_set():
                    self.adapt(client)
            except Exception as exc:  # noqa: BLE001 - the run goes on; said once per cause
                self._say_once(f"elastic watch: {type(exc).__name__}: {exc}")

    def _say_once(self, text: str) -> None:
        if text not in self.said:
            self.said.add(text)
            log.warning("%s", text)

    # -- following the worker jobs ---------------------------------------------------------

    def _worker_nodes(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(tag, node) -> the job's record, for every worker job that has a plan."""
        out = {}
        for tag, record in jobs.jobs(self.run).items():
            if record.get("role") != JobRole.WORKER:
                continue
            plan = read_json(self.run.jobs_dir / tag / "plan.json", {}) or {}
            for node in plan.get("nodes", []):
                out[(tag, node["name"])] = record
        return out

    def follow(self, table: dict[str, dict[str, Any]]) -> None:
        """Record worker nodes that joined and those that left (released or lost)."""
        alive: dict[str, str] = {}
        for node_id, node in table.items():
            if node["alive"]:
                for res in node["resources"]:
                    alive[res] = node_id
        workers = self._worker_nodes()
        for key, record in workers.items():
            tag, name = key
            if key in self.left:
                continue
            if key not in self.joined:
                joined_as = alive.get(node_resource(name))
                if joined_as is not None and record.get("state") != JobPhase.ENDED:
                    self.joined[key] = joined_as
                    self.run.update_node(name, fresh=True, joined=time.time(), job=tag,
                                         job_id=record.get("job_id"))
                    log.info("node %s of worker job %s (%s) joined", name, tag,
                             record.get("job_id"))
                continue
            node = table.get(self.joined[key], {})
            agent = read_json(self.run.node_state_file(name), {}) or {}
            ended = agent.get("state") in NODE_ENDED
            if node.get("alive", False) and not ended:
                continue
            settled = (ended or record.get("state") == JobPhase.ENDED
                       or time.monotonic() - self.dying.setdefault(key, time.monotonic())
                       > self.settle_s)
            if settled:
                self.left.add(key)
                self._leave(name, tag, record, node, agent)
        for tag in {t for t, _ in workers}:
            names = [n for t, n in workers if t == tag]
            if all((tag, n) in self.joined for n in names):
                self.run.update_job(tag, only_from={JobPhase.JOINING}, state=JobPhase.JOINED,
                                    joined=time.time())

    def _leave(self, name: str, tag: str, record: dict[str, Any], node: dict[str, Any],
               agent: dict[str, Any]) -> None:
        """Released: the job was drained, reached its walltime or was cancelled (its `hpcray
        up` said so, or its agent stopped on a signal or a stop request, or Ray drained the
        node). Lost: the job failed, its agent failed, or the node died unasked."""
        record = jobs.jobs(self.run).get(tag, record)  # as it is now, not as first seen
        death = node.get("death", "")
        reason = (agent.get("reason") or agent.get("error") or record.get("end_reason")
                  or death or "left the cluster")
        failed = (str(record.get("end_reason", "")).startswith("failed")
                  or agent.get("state") == NodeState.FAILED)
        graceful = not failed and (
            record.get("state") in (JobPhase.DRAINING, JobPhase.ENDED)
            or record.get("stopping") is not None or "DRAIN" in death
            or (agent.get("state") == NodeState.STOPPED
                and str(agent.get("reason", "")).startswith(_LEFT_OF_ITSELF)))
        if graceful:
            self.run.update_node(name, released=time.time(), released_reason=reason)
            log.info("node %s of worker job %s released: %s", name, tag, reason)
            return
        self.run.update_node(name, lost=time.time(), lost_reason=reason)
        self.run.add_lost(name)
        log.error("node %s of worker job %s left the cluster: %s", name, tag, reason)

    def _ask_scheduler(self) -> None:
        """Every 15 s: worker jobs the scheduler ended unannounced are ended (jobs.py)."""
        if time.monotonic() - self.asked_scheduler < 15:
            return
        self.asked_scheduler = time.monotonic()
        for tag, record in jobs.jobs(self.run).items():
            if record.get("role") != JobRole.WORKER or record.get("state") == JobPhase.ENDED:
                continue
            jobs.end_if_gone(self.run, tag)

    # -- adapting ----------------------------------------------------------------------------

    def _decide(self, action: str, reason: str, **fields: Any) -> None:
        entry = {"time": time.time(), "action": action, "reason": reason, **fields}
        with open(self.run.path / DECISIONS, "a") as out:
            out.write(json.dumps(entry) + "\n")
        log.info("elastic: %s (%s)", action, reason)

    def adapt(self, client: Any) -> None:
        """Grow for work that waits; release worker jobs whose nodes all sit idle. Every
        worker job of the run counts, those a person grew by hand included."""
        spec = self.spec
        assert spec is not None
        pending, node_states = raycompat.cluster_demand(client)
        needed, growable = nodes_wanted(pending, self.cpus, self.gpus)
        now = time.monotonic()
        self.waiting_since = (self.waiting_since or now) if growable else None
        workers = {t: r for t, r in jobs.jobs(self.run).items()
                   if r.get("role") == JobRole.WORKER and r.get("state") != JobPhase.ENDED}
        starting = [t for t, r in workers.items()
                    if r.get("state") in (JobPhase.SUBMITTED, JobPhase.JOINING)]
        if (self.waiting_since is not None and now - self.waiting_since >= spec.grow_after
                and now >= self.refused_until):
            self._grow(needed, growable, now - self.waiting_since, len(starting),
                       len(workers) - len(starting))
            self.waiting_since = now  # the next grow waits grow_after again
        if growable:
            return
        for tag, record in workers.items():
            if record.get("state") != JobPhase.JOINED:
                continue
            keys = [(tag, n) for n in record.get("node_names", [])
                    if (tag, n) in self.joined and (tag, n) not in self.left]
            states = [node_states.get(self.joined[k], {}) for k in keys]
            if keys and all(s.get("status") == "IDLE" and s.get("idle_s", 0) >= spec.idle_after
                            for s in states):
                idle = min(s["idle_s"] for s in states)
                why = f"its nodes idle for {idle:.0f}s (idle_after {spec.idle_after}s)"
                if request_release(self.run, tag, f"elastic: {why}", IDLE_DRAIN_S):
                    self._decide("shrink", why, job=tag, job_id=record.get("job_id"))

    def _grow(self, needed: int, growable: list[tuple[dict[str, float], int]], waited: float,
              starting: int, running: int) -> None:
        spec = self.spec
        assert spec is not None
        count = jobs_to_submit(needed, spec, starting, running)
        shapes = ", ".join(f"{n} x {shape}" for shape, n in growable[:3])
        if count == 0:
            if starting + running >= spec.max_jobs:
                self._say_once(f"elastic: work waits ({shapes}) but max_jobs "
                               f"({spec.max_jobs}) worker jobs are running or queued")
            return
        left = self.job_started + self.workflow.allocation.walltime - time.time()
        walltime = min(spec.walltime or int(left), int(left))
        if walltime <= self.warning + 60:
            self._say_once(f"elastic: no grow: {int(left)}s left of the run's walltime")
            return
        why = (f"{sum(n for _, n in growable)} waiting for {waited:.0f}s ({shapes}); "
               f"{needed} node(s) wanted")
        for _ in range(count):
            try:
                tag, job_id = jobs.submit_job(self.run, JobRole.WORKER, nodes=spec.nodes_per_job,
                                              walltime=walltime, partition=spec.partition,
                                              reason=f"elastic: {why}")
            except Exception as exc:  # noqa: BLE001 - a refused submission is a decision too
                self._decide("grow refused", f"{why}: {exc}")
                # the scheduler's mind does not change every few seconds
                self.refused_until = time.monotonic() + max(60.0, 4 * spec.grow_after)
                return
            self._decide("grow", why, job=tag, job_id=job_id, nodes=spec.nodes_per_job)


# a worker job released for being idle has nothing to wait for: a short drain deadline
IDLE_DRAIN_S = 60.0


def request_release(run: RunDir, tag: str, reason: str, drain_timeout: float | None) -> bool:
    """Ask a worker job's `hpcray up` to drain and end (jobs/<tag>/drain: the reason and the
    drain's deadline in seconds); False if it was asked already."""
    drain = run.jobs_dir / tag / "drain"
    drain.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(drain, "x") as out:
            json.dump({"reason": reason, "drain_timeout": drain_timeout}, out)
    except FileExistsError:
        return False
    return True


def read_release(path: Path) -> tuple[str, float | None]:
    """What request_release wrote: (reason, drain deadline in seconds or None)."""
    try:
        data = json.loads(path.read_text())
        return str(data.get("reason") or "released"), data.get("drain_timeout")
    except (OSError, ValueError, AttributeError):
        return "released", None
