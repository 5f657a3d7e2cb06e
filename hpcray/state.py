"""The states a run, a node agent, a service and a stage go through, and `run.json` as a
model. One place, so that a state is spelled once and "finished" means one set.

StrEnum values are the strings on disk: files written before these types read the same.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same behaviour for what hpcray uses (str(), format, ==, JSON)
    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class RunState(StrEnum):
    """A run's `state` in run.json (QUEUED and SUBMITTING are only what `status` shows for a
    run still at SUBMITTED)."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    SUBMITTING = "submitting"
    BOOTSTRAPPING = "bootstrapping"
    RUNNING = "running"
    # a job reached its walltime and handed the run to its successor (allocation.relay), which
    # has not started yet: neither ended nor alive (no `hpcray up`); run.json's `job_id` is the
    # successor's, so status, wait and cancel follow it
    RELAYING = "relaying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    WALLTIME = "walltime"
    LOST = "lost"


TERMINAL: frozenset[RunState] = frozenset({
    RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.WALLTIME, RunState.LOST})
"""A run in one of these has ended; nothing will change its state again."""

ALIVE: frozenset[RunState] = frozenset({RunState.BOOTSTRAPPING, RunState.RUNNING})
"""`hpcray up` is running: a job gone while its run is in one of these ended without saying
(unless a relay's successor is still to come: api.status). RELAYING is in neither set."""


class NodeState(StrEnum):
    """A node agent's `state` in nodes/<name>.json (PENDING: no file yet)."""

    PENDING = "pending"
    STARTED = "started"
    RAY_STARTING = "ray_starting"
    RAY_STARTED = "ray_started"
    FAILED = "failed"
    STOPPED = "stopped"


NODE_ENDED: frozenset[NodeState] = frozenset({NodeState.FAILED, NodeState.STOPPED})
"""The agent has stopped: its node is no longer part of the cluster."""


class ServiceState(StrEnum):
    """A service's `state` in run.json's `services` and endpoints.json."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"  # Serve says running; its first call not yet answered
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"
    STOPPED = "stopped"


SERVICE_LIVE: frozenset[ServiceState] = frozenset({
    ServiceState.PENDING, ServiceState.STARTING, ServiceState.READY})
"""Replicas of a service in these still send request rates worth showing."""


class StageState(StrEnum):
    """A stage's `state` in run.json's `stages`."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class AttemptState(StrEnum):
    """How one attempt of a stage's task ended (stages/<stage>/attempts.jsonl)."""

    DONE = "done"
    TIMEOUT = "timeout"
    LOST = "lost"
    FAILED = "failed"


class JobRole(StrEnum):
    """What a batch job is to its run (run.json `jobs`, keyed by a tag: main, w1, r1, ...)."""

    MAIN = "main"            # the job `hpcray submit` submitted: the head and its nodes
    WORKER = "worker"        # a worker-only job that grew the run (`hpcray grow`, elastic)
    SUCCESSOR = "successor"  # a relay's next job: brings the run up again and resumes it


class JobPhase(StrEnum):
    """Where one job of a run is (run.json `jobs.<tag>.state`)."""

    SUBMITTED = "submitted"  # handed to the scheduler, not started
    JOINING = "joining"      # a worker job's agents are starting Ray and joining
    JOINED = "joined"        # its nodes take work
    DRAINING = "draining"    # no new work; what runs there finishes, replicas move away
    RELAYED = "relayed"      # a main or successor job that handed the run to its successor
    ENDED = "ended"          # its nodes left the run (released, cancelled, or failed)


class RunRecord(BaseModel):
    """run.json: the fields hpcray writes. Unknown fields are kept, so a run directory from an
    older or newer hpcray still loads."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)  # job ids, hand-edited

    state: RunState = RunState.SUBMITTED
    run_id: str | None = None
    workflow: str | None = None
    site: str | None = None
    scheduler: str = "local"
    job_id: str | None = None
    times: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None  # the class of the exception that ended the run
    cluster_id: str | None = None
    nodes_expected: int | None = None
    node_names: list[str] = Field(default_factory=list)
    nodes_joined: int = 0
    nodes_lost: list[str] = Field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    bootstrap_host: str | None = None
    up_pid: int | None = None
    head_address: str | None = None
    driver_pid: int | None = None
    driver_exit_code: int | None = None
    services: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    phases: dict[str, float] = Field(default_factory=dict)
    # the run's batch jobs by tag (main, w1, r1, ...): role (JobRole), state (JobPhase),
    # job_id, nodes, submitted/started/ended times, why it ended (bootstrap/jobs.py)
    jobs: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


# a run's phases: when each was reached, from the job's start (run.json `times`); a driver
# function's own first line (driver_entry) when it wrote one, else the driver's start
PHASE_EVENTS = (("cluster up", ("all_joined",)), ("Serve up", ("serve_up",)),
                ("services ready", ("services_ready",)),
                ("driver started", ("driver_entry", "driver_start")))


def phases(times: dict[str, float]) -> dict[str, float]:
    """Seconds from the job's start to each phase reached, and the teardown's length:
    where a run's start-up time went (`run.json` phases, `hpcray status`)."""
    start = times.get("job_started")
    out: dict[str, float] = {}
    if start is None:
        return out
    for phase, events in PHASE_EVENTS:
        at = next((times[e] for e in events if e in times), None)
        if at is not None:
            out[phase] = round(at - start, 3)
    if "teardown_start" in times and "teardown_end" in times:
        out["teardown"] = round(times["teardown_end"] - times["teardown_start"], 3)
    return out


def run_state(data: dict[str, Any]) -> RunState:
    """The state in a run.json as read by `status`, `wait` and `cancel`, which must not fail on
    an old run directory: before this module, a run stopped by a lost head recorded the reason
    ("head node n0 lost") as its state; any state not known here reads as failed."""
    try:
        return RunState(data.get("state", RunState.SUBMITTED))
    except ValueError:
        return RunState.FAILED
