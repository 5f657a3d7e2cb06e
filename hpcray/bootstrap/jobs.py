"""The other batch jobs of a run: worker-only jobs that grow it (`hpcray grow`, the elastic
controller) and a relay's successor. Each is rendered from the request `hpcray submit`
checked (resolved.json), with the same scheduler module and job-script template; only the
node count, walltime, partition, what `hpcray up` is told (`--job TAG`) and the job it waits
for differ. Each lives in jobs/<tag>/ (job.sh, job.out, plan.json) and in run.json's `jobs`."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from hpcray.bootstrap.resolved import load_resolved
from hpcray.errors import ResourceError, SchedulerError
from hpcray.rundir import RunDir
from hpcray.schedulers import JobRequest, JobState, get_scheduler
from hpcray.sites.queues import choose_queue
from hpcray.spec.walltime import hhmmss
from hpcray.state import JobPhase, JobRole

log = logging.getLogger("hpcray.jobs")

MAIN = "main"  # the tag of the job `hpcray submit` submitted
_PREFIX = {JobRole.WORKER: "w", JobRole.SUCCESSOR: "r"}


def jobs(run: RunDir) -> dict[str, dict[str, Any]]:
    """run.json's `jobs`, with the main job's entry even for a run directory made before."""
    data = run.read()
    out = dict(data.get("jobs") or {})
    if MAIN not in out and data.get("job_id"):
        out[MAIN] = {"role": JobRole.MAIN, "job_id": data["job_id"]}
    return out


def next_tag(run: RunDir, role: JobRole) -> str:
    """The next free tag of this role (w1, w2, ...; r1, ...), claimed by making its directory:
    a manual `hpcray grow` and the elastic controller never get the same one."""
    prefix = _PREFIX[role]
    run.jobs_dir.mkdir(parents=True, exist_ok=True)
    taken = set(jobs(run))
    k = 1
    while True:
        tag = f"{prefix}{k}"
        if tag not in taken:
            try:
                (run.jobs_dir / tag).mkdir()
                return tag
            except FileExistsError:
                pass
        k += 1


def job_dir(run: RunDir, tag: str) -> Path:
    """Where a job's script, output and plan live: the run directory for the main job."""
    return run.path if tag == MAIN else run.jobs_dir / tag


def request_for(run: RunDir, tag: str, *, nodes: int | None = None,
                walltime: int | None = None, partition: str | None = None,
                after_job: str | None = None) -> JobRequest:
    """The main job's request, changed where this job differs; what cannot run fails here,
    before anything is submitted."""
    workflow, site, request = load_resolved(run)
    fields = {f.name for f in dataclasses.fields(JobRequest)}
    base: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                            for k, v in request.items() if k in fields}
    nodes = int(base["nodes"]) if nodes is None else nodes
    walltime = int(base["walltime"]) if walltime is None else walltime
    where = f"site '{site.name}'"
    if nodes < 1:
        raise ResourceError(f"{nodes} nodes: a job needs at least one", field="nodes")
    if site.max_nodes and nodes > site.max_nodes:
        raise ResourceError(f"{nodes} nodes exceed the {site.max_nodes} nodes of {where}",
                            field="nodes")
    if site.max_walltime and walltime > site.max_walltime:
        raise ResourceError(f"{hhmmss(walltime)} exceeds the limit of {where} "
                            f"({hhmmss(site.max_walltime)})", field="walltime")
    if walltime <= int(base["walltime_warning"]):
        raise ResourceError(f"walltime {hhmmss(walltime)} is not longer than the warning "
                            f"({base['walltime_warning']}s) the job drains at", field="walltime")
    # the queue is chosen again for this job's size and walltime (the main job's may not
    # take it: a minimum node count, one running job per user); one named is checked
    named = partition or workflow.allocation.partition
    queue = choose_queue(site, nodes, walltime, named, workflow.allocation.qos)
    here = job_dir(run, tag)
    suffix = "" if tag == MAIN else f"-{tag}"
    return dataclasses.replace(
        JobRequest(**base), nodes=nodes, walltime=walltime,
        partition=queue.partition, qos=queue.qos,
        job_name=f"{base['job_name']}{suffix}"[:63],
        up_args=() if tag == MAIN else ("--job", tag),
        output_path=None if tag == MAIN else str(here / "job.out"), after_job=after_job)


def submit_job(run: RunDir, role: JobRole, *, nodes: int | None = None,
               walltime: int | None = None, partition: str | None = None,
               after_job: str | None = None, reason: str = "") -> tuple[str, str]:
    """Render and submit one more job of the run; returns (tag, job id). The job is in
    run.json's `jobs` before the scheduler is asked, so the run never has a job it does not
    know of; a refused submission is recorded as ended, with the scheduler's words."""
    _, site, _ = load_resolved(run)
    scheduler = get_scheduler(site.scheduler)
    tag = next_tag(run, role)
    try:
        request = request_for(run, tag, nodes=nodes, walltime=walltime, partition=partition,
                              after_job=after_job)
    except Exception:
        (run.jobs_dir / tag).rmdir()  # refused before anything was submitted: no trace
        raise
    text = scheduler.job_script(request)
    here = job_dir(run, tag)
    here.mkdir(parents=True, exist_ok=True)
    script = here / "job.sh"
    script.write_text(text)
    script.chmod(0o755)
    run.update_job(tag, role=role, state=JobPhase.SUBMITTED, nodes=request.nodes,
                   walltime=request.walltime, partition=request.partition, after=after_job,
                   reason=reason, submitted=time.time())
    try:
        job_id = scheduler.submit(script, here)
    except SchedulerError as exc:
        run.update_job(tag, state=JobPhase.ENDED, ended=time.time(), end_reason=str(exc))
        raise
    run.update_job(tag, job_id=job_id)
    log.info("submitted %s job %s (%s): %d node(s), %s%s", role, job_id, tag, request.nodes,
             hhmmss(request.walltime), f"; {reason}" if reason else "")
    return tag, job_id


def scheduler_state(run: RunDir, tag: str) -> JobState:
    """What the scheduler says of one of the run's jobs (UNKNOWN: not submitted or purged)."""
    job_id = jobs(run).get(tag, {}).get("job_id")
    if not job_id:
        return JobState.UNKNOWN
    _, site, _ = load_resolved(run)
    return get_scheduler(site.scheduler).state(str(job_id))


def end_if_gone(run: RunDir, tag: str) -> bool:
    """End a job the scheduler has ended whose `hpcray up` never said so (killed outright),
    so it neither holds a place under max_jobs nor keeps a shrink waiting. A job's own
    record, written before its process exits, always wins. True if ended here."""
    state = scheduler_state(run, tag)
    if not state.finished:
        return False
    return run.update_job(tag, only_from=set(JobPhase) - {JobPhase.ENDED},
                          state=JobPhase.ENDED, ended=time.time(),
                          end_reason=f"failed: the scheduler ended it ({state.value}) "
                                     "unannounced")


def release_queued(run: RunDir) -> list[str]:
    """Cancel the run's worker jobs that have not started: at the run's end they would only
    start to find nothing to join. Running ones end by themselves (the run's stop file)."""
    cancelled = []
    _, site, _ = load_resolved(run)
    for tag, record in jobs(run).items():
        if (record.get("role") == JobRole.WORKER and record.get("state") == JobPhase.SUBMITTED
                and record.get("job_id")):
            try:
                get_scheduler(site.scheduler).cancel(str(record["job_id"]))
            except SchedulerError as exc:
                log.warning("worker job %s not cancelled: %s", tag, exc)
                continue
            run.update_job(tag, state=JobPhase.ENDED, ended=time.time(),
                           end_reason="the run ended before it started")
            cancelled.append(tag)
    return cancelled
