"""A relay (`allocation.relay`): one run carried past its walltime by a chain of batch jobs.

At the walltime warning a job of the chain submits its successor at once (held by the
scheduler's dependency until this job has ended, so it queues while this one drains), then
drains and tears down as always; the run is left `relaying`, not ended, with `job_id` the
successor's. The successor (`hpcray up --job r1`) takes the run over: the previous job's
cluster files move to jobs/<tag>/ (its head.json, plan, node states and stop file would
otherwise stop or mislead the new agents), run.json's per-job fields start afresh (the
previous job's times stay in `jobs.<tag>.times`), and the run resumes: services deployed
again, stages skip every task recorded done, and every process is told it is resumed
(HPCRAY_RESUMED, `hpcray.context().resumed`). docs/elastic.md#relay-past-the-walltime."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from typing import Any

from hpcray import env as hpcray_env
from hpcray.bootstrap import jobs
from hpcray.bootstrap.shutdown import record
from hpcray.bootstrap.signals import Stop
from hpcray.errors import BootstrapError, HpcrayError
from hpcray.rundir import RunDir
from hpcray.schedulers import get_scheduler
from hpcray.spec import Workflow
from hpcray.state import TERMINAL, JobPhase, JobRole, RunState, phases, run_state

log = logging.getLogger("hpcray.up")

# what one job's cluster leaves in the run directory, moved aside by its successor
CLUSTER_FILES = ("plan.json", "head.json", "stop", "endpoints.json")
CLUSTER_DIRS = ("nodes", "ray-events")
# run.json's fields that describe one job's cluster, started afresh by a successor
JOB_FIELDS: dict[str, Any] = {
    "nodes": {}, "nodes_lost": [], "nodes_joined": 0, "services": {}, "phases": {},
    "error": None, "error_type": None, "driver_pid": None, "driver_exit_code": None,
    "head_address": None, "cluster_id": None}
CANCEL_MARK = "cancel_requested"  # api.cancel's mark in run.json times


def chain(run: RunDir) -> list[str]:
    """The tags of the run's main and successor jobs, in the order they were submitted."""
    listed = jobs.jobs(run)
    tags = [t for t, j in listed.items() if j.get("role") in (JobRole.MAIN, JobRole.SUCCESSOR)]
    return sorted(tags, key=lambda t: (t != jobs.MAIN, listed[t].get("submitted") or 0.0, t))


def refusal(workflow: Workflow, run: RunDir) -> str | None:
    """Why this job hands the run to no successor at its walltime warning (None: it does)."""
    relay = workflow.allocation.relay
    if relay is None:
        return "allocation.relay is not set"
    if CANCEL_MARK in run.read().get("times", {}):
        return "the run is being cancelled"
    ran = len(chain(run))
    if ran >= relay.max_jobs:
        return f"the relay's {relay.max_jobs} jobs have run (allocation.relay.max_jobs)"
    return None


class Relay:
    """One job's part of the relay: submits the successor the moment the walltime warning
    comes (a thread waiting on the run's stop), and settles at the end whether the run ends
    here or goes on in that successor."""

    def __init__(self, run: RunDir, workflow: Workflow, job: str, stop: Stop) -> None:
        self.run, self.workflow, self.job, self.stop = run, workflow, job, stop
        self.successor: tuple[str, str] | None = None  # (tag, job id) once submitted
        self.error: Exception | None = None  # why the successor could not be submitted
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take_over(self, env: dict[str, str]) -> bool:
        """At a successor's start: take the run over (take_over below) and tell every process
        this job starts that the run is resumed; False when there is nothing to resume. The
        main job: True."""
        if self.job == jobs.MAIN:
            return True
        before = take_over(self.run, self.job)
        if before is None:
            return False
        env[hpcray_env.RESUMED] = str(before)
        return True

    def start(self, started: float) -> None:
        """This job runs the run from `started`; the walltime warning submits the successor
        from now on (allocation.relay)."""
        start_job(self.run, self.job, started)
        if self.workflow.allocation.relay is None:
            return
        self._thread = threading.Thread(target=self._on_stop, name="relay", daemon=True)
        self._thread.start()

    def _on_stop(self) -> None:
        self.stop.event.wait()
        with self._lock:  # not once the run has ended for another reason
            if self._closed or self.stop.reason != RunState.WALLTIME:
                return
            why = refusal(self.workflow, self.run)
            if why is not None:
                log.info("walltime warning: the run ends here (%s)", why)
                return
            self._submit()

    def _submit(self) -> None:
        after = jobs.jobs(self.run).get(self.job, {}).get("job_id") or self.run.read().get(
            "job_id")
        try:
            if not after:  # never a successor that could start beside this job
                raise BootstrapError(f"job {self.job}'s id is not in run.json: a successor "
                                     "could not be held until it ends")
            tag, job_id = jobs.submit_job(
                self.run, JobRole.SUCCESSOR, after_job=str(after),
                reason=f"relay: {self.job} reached its walltime warning")
        except Exception as exc:  # noqa: BLE001 - recorded as the run's error at its end
            log.error("relay: the successor job could not be submitted: %s", exc)
            self.error = exc
            return
        self.successor = (tag, job_id)
        self.run.update_job(self.job, state=JobPhase.DRAINING, successor=tag)
        log.info("relay: successor job %s (%s) submitted; it starts once this job has ended",
                 job_id, tag)

    def settle(self) -> None:
        """Before the teardown: a submission under way finishes (the successor queues while
        this job drains), and none starts later (a warning during the teardown of a run
        that ended for another reason)."""
        with self._lock:
            self._closed = True

    def outcome(self, state: RunState, error: str | None, error_type: str | None
                ) -> tuple[RunState, str | None, str | None]:
        """The run's state once this job is torn down: RELAYING when a successor takes it
        over; otherwise the state it ended in, with the relay's own failure as its error. A
        successor whose run ends here after all (cancelled, failed) is cancelled: it would
        have nothing to resume."""
        self.settle()
        if self.successor is not None:
            tag, job_id = self.successor
            cancelled = CANCEL_MARK in self.run.read().get("times", {})
            if state == RunState.WALLTIME and not cancelled:
                return RunState.RELAYING, None, None
            end_successor(self.run, tag, "cancelled with the run" if cancelled
                          else f"the run ended {state} in {self.job}")
            return (RunState.CANCELLED if cancelled and state == RunState.WALLTIME
                    else state), error, error_type
        if self.error is not None and state == RunState.WALLTIME and error is None:
            return state, f"relay: no successor job: {self.error}", type(self.error).__name__
        return state, error, error_type

    def record_end(self, state: RunState, error: str | None, error_type: str | None
                   ) -> RunState:
        """After the teardown: this job's end in `jobs`, then the run's: `finished` with its
        state, or `relayed` (RELAYING, job_id the successor's: status, wait and cancel
        follow it from here). Returns the state recorded; nothing here raises."""
        state, error, error_type = self.outcome(state, error, error_type)
        try:
            reached = phases(self.run.read().get("times", {}))
            end_job(self.run, self.job, state)
        except (OSError, ValueError) as exc:
            log.error("cannot record this job's end in run.json: %s", exc)
            reached = {}
        if state == RunState.RELAYING and self.successor is not None:
            record(self.run, "relayed", state=state, job_id=self.successor[1], error=None,
                   error_type=None, phases=reached)
        else:
            record(self.run, "finished", state=state, error=error, error_type=error_type,
                   phases=reached)
        return state


def end_successor(run: RunDir, tag: str, reason: str) -> None:
    """Cancel a successor that must not run, and record why (a failed cancel is logged)."""
    job_id = jobs.jobs(run).get(tag, {}).get("job_id")
    if job_id:
        try:
            get_scheduler(run.read().get("scheduler", "local")).cancel(str(job_id))
        except HpcrayError as exc:
            log.warning("relay: cancelling successor job %s: %s", job_id, exc)
    run.update_job(tag, state=JobPhase.ENDED, ended=time.time(), end_reason=reason)
    log.info("relay: successor %s (%s) cancelled: %s", tag, job_id, reason)


def pending_successors(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """run.json's successor jobs submitted and not yet started or ended (oldest first)."""
    listed = data.get("jobs") or {}
    return sorted(((t, j) for t, j in listed.items() if j.get("role") == JobRole.SUCCESSOR
                   and j.get("state") == JobPhase.SUBMITTED and j.get("job_id")),
                  key=lambda tj: tj[1].get("submitted") or 0.0)


def start_job(run: RunDir, tag: str, started: float) -> None:
    run.update_job(tag, state=JobPhase.JOINING, started=started, host=socket.gethostname(),
                   up_pid=os.getpid())


def end_job(run: RunDir, tag: str, state: RunState) -> None:
    """This job's end in run.json's `jobs`: RELAYED or ENDED, when, and its own `times` (a
    successor starts run.json's afresh): the relay gap is `jobs.main.ended` (or its
    `times.teardown_end`) to the next job's `times.services_ready`."""
    times = dict(run.read().get("times", {}))
    run.update_job(tag, state=JobPhase.RELAYED if state == RunState.RELAYING else JobPhase.ENDED,
                   ended=time.time(), end_state=str(state), times=times,
                   teardown_end=times.get("teardown_end"))


def take_over(run: RunDir, tag: str) -> int | None:
    """A successor's start: the number of jobs that ran the run before it, or None when the
    run has ended meanwhile (cancelled, failed) and there is nothing to resume. Moves the
    previous job's cluster files to jobs/<previous>/ and starts run.json's per-job fields
    afresh, before any agent of this job can read them."""
    order = chain(run)
    if tag not in order or order.index(tag) == 0:
        raise BootstrapError(f"job {tag!r} is not a relay successor of this run "
                             f"(its jobs: {', '.join(order) or 'none'})")
    data = run.read()
    state = run_state(data)
    if state in TERMINAL or CANCEL_MARK in data.get("times", {}):
        why = f"the run had ended ({state}) before this job started" if state in TERMINAL \
            else "the run was cancelled before this job started"
        log.info("relay: %s; nothing to resume", why)
        run.update_job(tag, state=JobPhase.ENDED, ended=time.time(), end_reason=why)
        return None
    previous = order[order.index(tag) - 1]
    archive = run.jobs_dir / previous
    archive.mkdir(parents=True, exist_ok=True)
    for name in CLUSTER_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(run.path / name, archive / name)
    for name in CLUSTER_DIRS:
        if (run.path / name).exists():
            shutil.rmtree(archive / name, ignore_errors=True)
            shutil.move(str(run.path / name), str(archive / name))
    run.nodes.mkdir(exist_ok=True)
    before = jobs.jobs(run).get(previous, {})
    if before.get("state") not in (JobPhase.RELAYED, JobPhase.ENDED):  # killed before it could
        run.update_job(previous, state=JobPhase.RELAYED, end_state=str(state),
                       end_reason="ended without recording its end (killed at its walltime?)",
                       times=dict(data.get("times", {})))
    times = data.get("times", {})
    own = jobs.jobs(run).get(tag, {}).get("job_id") or data.get("job_id")
    run.replace(**JOB_FIELDS, times={k: times[k] for k in ("submitted",) if k in times},
                job_id=own, state=RunState.BOOTSTRAPPING)
    log.info("relay: %s takes the run over from %s (job %d of the relay)", tag, previous,
             order.index(tag) + 1)
    return order.index(tag)
