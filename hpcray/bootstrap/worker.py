"""A worker job's `hpcray up` (`hpcray up --job w1`): its nodes join a running run's cluster
with the run's token and the head's address from the run directory, take work until the job
is released, and leave it gracefully.

Released means: `hpcray shrink` or the elastic controller asked (jobs/<tag>/drain), or the
job's own walltime warning came. Its nodes are then drained as Ray drains a preempted node:
no new task or actor goes there, what runs there finishes (Serve starts replicas elsewhere
before it stops those there), and each raylet exits once idle; then the agents tear down
and the job ends COMPLETED. A cancelled job (scancel) loses its nodes at once: Ray retries
their tasks elsewhere; the run records the nodes as released, not lost."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from typing import Any

from hpcray import env as hpcray_env
from hpcray.bootstrap import jobs, launch
from hpcray.bootstrap.elastic import read_release, request_release
from hpcray.bootstrap.plan import ClusterPlan
from hpcray.bootstrap.resolved import load_resolved
from hpcray.bootstrap.signals import Stop, install_handlers, start_walltime_timer
from hpcray.errors import BootstrapError, HpcrayError
from hpcray.rundir import RunDir, read_json
from hpcray.runtime import raycompat
from hpcray.runtime.auth import auth_env
from hpcray.runtime.placement import node_resource
from hpcray.runtime.teardown import stop_group
from hpcray.schedulers import NodeResources, get_scheduler
from hpcray.state import TERMINAL, JobPhase, JobRole, RunState, run_state

log = logging.getLogger("hpcray.worker")

POLL_S = 0.5
# a walltime warning leaves walltime_warning seconds: the drain's deadline keeps the agents'
# teardown (ray.teardown_grace) and this much more of it, so the job still ends COMPLETED
TEARDOWN_RESERVE_S = 15


def next_index(run: RunDir) -> int:
    """The first node index no plan of the run has used: a node's index picks its port block
    and temp dir, which must differ from every other node of the run on a shared host."""
    used = [-1]
    for path in [run.plan, *run.jobs_dir.glob("*/plan.json")]:
        plan = read_json(path, {}) or {}
        used += [int(n["index"]) for n in plan.get("nodes", [])]
    return max(used) + 1


def other_job(run: RunDir, tag: str) -> int | None:
    """`hpcray up --job TAG` for a job other than the main one: a worker job runs here; a
    tag run.json does not know ends at once (exit 2) and touches nothing (a typo must not end
    the run); a relay's successor (None) is ClusterUp's."""
    known = jobs.jobs(run)
    if tag not in known:
        log.error("run %s has no job %r (run.json jobs: %s)", run.path.name, tag,
                  ", ".join(known) or "none")
        return 2
    if known[tag].get("role") == JobRole.WORKER:
        return WorkerJob(run, tag)()
    return None


class WorkerJob:
    """One worker job's life: join, serve, drain when released, tear down its own agents."""

    def __init__(self, run: RunDir, tag: str, env: dict[str, str] | None = None) -> None:
        self.run = run
        self.tag = tag
        self.env = dict(os.environ) if env is None else env
        self.workflow, self.site, self.request = load_resolved(run)
        self.stop = Stop()
        self.launched: list[subprocess.Popen] = []
        self.plan: ClusterPlan | None = None
        self.here = run.jobs_dir / tag
        self.drain_file = self.here / "drain"
        self.stop_file = self.here / "stop"

    def __call__(self) -> int:
        install_handlers(self.stop)
        if not self.site.walltime_signal:  # PBS sends no warning: our own clock
            start_walltime_timer(self.stop, int(self.record.get("walltime") or
                                                self.workflow.allocation.walltime),
                                 self.workflow.allocation.walltime_warning)
        if not self.run.update_job(self.tag, only_from={JobPhase.SUBMITTED},
                                   state=JobPhase.JOINING, started=time.time(),
                                   up_host=socket.gethostname(), up_pid=os.getpid()):
            log.info("worker job %s was released before it started", self.tag)
            return 0
        reason, code = "", 0
        try:
            head = self._head()
            if head is None:
                reason = "the run had ended: nothing to join"
                return 0
            self._launch(head)
            reason = self._serve(head)
        except HpcrayError as exc:
            reason, code = f"failed: {exc}", 1
            log.error("%s", exc)
        except Exception as exc:  # noqa: BLE001 - recorded in run.json, then exit 1
            reason, code = f"failed: {type(exc).__name__}: {exc}", 1
            log.exception("worker job %s failed", self.tag)
        finally:
            # said before the teardown: the main job classifies the nodes as they leave
            self.run.update_job(self.tag, stopping=time.time(), end_reason=reason)
            self._teardown(reason)
            self.run.update_job(self.tag, state=JobPhase.ENDED, ended=time.time(),
                                end_reason=reason)
        log.info("worker job %s ended: %s", self.tag, reason)
        return code

    @property
    def record(self) -> dict[str, Any]:
        return jobs.jobs(self.run).get(self.tag, {})

    def _head(self) -> dict[str, Any] | None:
        """The running run's head; None: the run has ended (or is between two jobs of a
        relay), nothing to join, and the job ends at once rather than hold its nodes."""
        state = run_state(self.run.read())
        head = read_json(self.run.head)
        if state in TERMINAL or head is None or self.run.stop_file.exists():
            log.info("run %s is %s%s: nothing to join", self.run.path.name, state,
                     "" if head else " and has no head")
            return None
        return head

    def _check_hosts(self, names: list[str]) -> None:
        """A host that already runs a node of this run (the main job's, or a live worker
        job's) cannot take a second one: both would be one node to Ray's placement and to
        the run's records. Happens only where jobs share nodes."""
        mine = set(names)
        plans = [("the main job", read_json(self.run.plan, {}) or {})]
        for tag, record in jobs.jobs(self.run).items():
            if tag != self.tag and record.get("role") == JobRole.WORKER \
                    and record.get("state") != JobPhase.ENDED:
                plans.append((f"worker job {tag}",
                              read_json(self.run.jobs_dir / tag / "plan.json", {}) or {}))
        for who, plan in plans:
            taken = mine & {n["name"] for n in plan.get("nodes", [])}
            if taken:
                raise BootstrapError(
                    f"{', '.join(sorted(taken))} already runs a node of this run ({who}): "
                    "a worker job needs nodes of its own (exclusive nodes, or another "
                    "partition)")

    def _launch(self, head: dict[str, Any]) -> None:
        record = self.record
        request = self.request
        scheduler = get_scheduler(self.site.scheduler)
        alloc = scheduler.allocation_from_env(
            {**self.env, hpcray_env.LOCAL_JOB_TAG: self.tag},
            default_cpus=int(request["cpus_per_node"]),
            default_gpus=int(request["gpus_per_node"]),
            requested_nodes=int(record.get("nodes") or 1),
            exclusive=bool(request.get("exclusive")))
        if self.workflow.allocation.cpus_per_node:
            alloc.nodes = [NodeResources(n.name, self.workflow.allocation.cpus_per_node, n.gpus)
                           for n in alloc.nodes]
        self._check_hosts([n.name for n in alloc.nodes])
        if not self.run.token.exists():
            raise BootstrapError(f"{self.run.token} is missing: the run's nodes could not "
                                 "let this job's nodes in")
        self.plan = plan = launch.make_plan(
            self.run, self.workflow, self.site, request, self.env, alloc, job=self.tag,
            first_index=next_index(self.run))
        plan.save(self.run)
        self.run.update_job(self.tag, job_id=alloc.job_id, cluster_id=plan.cluster_id,
                            node_names=[n.name for n in plan.nodes])
        log.info("worker job %s (%s): %s join %s", self.tag, alloc.job_id,
                 ", ".join(f"{n.name} (cpus={n.cpus}, gpus={n.gpus})" for n in plan.nodes),
                 head["address"])
        launcher = self.env.get(hpcray_env.LAUNCHER) or self.site.launcher
        launch.launch_agents(self.run, plan, launcher, self.env, self.launched,
                             self.workflow.allocation.container,
                             self.request.get("workflow_dir"),
                             list(self.workflow.allocation.env))

    def _serve(self, head: dict[str, Any]) -> str:
        """Until the job is released, cancelled, or the run ends; returns why it ends."""
        assert self.plan is not None
        while True:
            if self.stop.event.is_set():
                if self.stop.reason == RunState.WALLTIME:
                    warning = int(self.request.get("walltime_warning") or 120)
                    reserve = self.workflow.ray.teardown_grace + TEARDOWN_RESERVE_S
                    deadline = max(warning - reserve, 1)
                    request_release(self.run, self.tag, "its walltime warning", deadline)
                    return self._drain(head, "its walltime warning", deadline)
                return f"stopped ({self.stop.reason})"
            if self.drain_file.exists():
                return self._drain(head, *read_release(self.drain_file))
            if self.run.stop_file.exists() or run_state(self.run.read()) in TERMINAL:
                return "the run ended"
            if all(p.poll() is not None for p in self.launched):
                raise BootstrapError("its node agents stopped: "
                                     f"{launch.node_report(self.run, self._names())}")
            time.sleep(POLL_S)

    def _names(self) -> list[str]:
        return [n.name for n in self.plan.nodes] if self.plan else []

    def _drain(self, head: dict[str, Any], why: str, deadline_s: float | None) -> str:
        """Ray drains each node of this job; waits until every one has left the cluster
        (its raylet exits once nothing runs there), the deadline passes, or a cancel."""
        self.run.update_job(self.tag, state=JobPhase.DRAINING, draining=time.time(),
                            drain_reason=why)
        os.environ.update(auth_env(self.run.token))
        client = raycompat.gcs_client(head["address"])
        wanted = {node_resource(name): name for name in self._names()}
        ids = {wanted[res]: node_id for node_id, node in raycompat.gcs_nodes(client).items()
               if node["alive"] for res in node["resources"] if res in wanted}
        for name, node_id in ids.items():
            refused = raycompat.drain_node(client, node_id, f"hpcray: {why}", deadline_s)
            if refused:
                log.warning("Ray refused to drain %s: %s", name, refused)
            else:
                log.info("draining %s (%s)", name, why)
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        while ids:
            table = raycompat.gcs_nodes(client)
            ids = {n: i for n, i in ids.items() if table.get(i, {}).get("alive")}
            if not ids:
                break
            if deadline is not None and time.monotonic() > deadline:
                log.warning("drain deadline passed; %s still ran work", ", ".join(ids))
                return f"released ({why}); drain deadline passed"
            if self.stop.event.is_set() and self.stop.reason != RunState.WALLTIME \
                    and "walltime" not in why:
                return f"stopped ({self.stop.reason}) while draining"
            if self.run.stop_file.exists():
                return "the run ended while draining"
            time.sleep(POLL_S)
        return f"released ({why})"

    def _teardown(self, reason: str) -> None:
        """The job's agents stop (their stop file), then whatever of the launch is left."""
        self.here.mkdir(parents=True, exist_ok=True)
        self.stop_file.write_text(reason or "released")
        grace = self.workflow.ray.teardown_grace + 30
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.launched):
            time.sleep(0.2)
        for proc in self.launched:
            if proc.poll() is None:
                stop_group(proc, 5)
