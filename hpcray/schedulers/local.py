"""No batch system: the job script runs on this machine as a detached process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from hpcray.env import LOCAL_JOB_TAG
from hpcray.errors import SchedulerError
from hpcray.schedulers.base import AllocationInfo, JobRequest, JobState, NodeResources, Scheduler


def local_node_names(count: int, job_tag: str | None = None) -> list[str]:
    """Emulated nodes' names; a worker job's carry its tag (vm-w1-n0), so they differ from
    the main job's on this one host."""
    host = socket.gethostname().split(".")[0]
    if job_tag:
        return [f"{host}-{job_tag}-n{i}" for i in range(count)]
    return [host] if count == 1 else [f"{host}-n{i}" for i in range(count)]


# A local job held until another has ended (a relay's successor): the job's interpreter waits
# for the other job's process to be gone (or a zombie its parent has not reaped yet), then
# becomes the job's bash; the job id (local-<pid>) is the same process throughout.
_AFTER = re.compile(r"^# local: after=(local-\d+)$", re.MULTILINE)
_WAIT_THEN_RUN = """\
import os, sys, time
import psutil
pid = int(sys.argv[1])
while True:
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            break
    except psutil.NoSuchProcess:
        break
    time.sleep(0.2)
os.execvp("bash", ["bash", sys.argv[2]])
"""


def _pid(job_id: str) -> int:
    try:
        return int(job_id.removeprefix("local-"))
    except ValueError:
        raise SchedulerError(f"{job_id!r} is not a local job id (local-<pid>)") from None


class Local(Scheduler):
    name = "local"
    directive_prefix = "# local:"

    def directives(self, req: JobRequest) -> list[str]:
        return [f"nodes={req.nodes}", f"walltime={req.walltime}s"]

    def dependency(self, job_id: str) -> str:
        """No batch system holds the job: submit() starts it waiting for that job's process."""
        _pid(job_id)
        return f"after={job_id}"

    def submit(self, script_path: Path, run_dir: Path) -> str:
        argv = ["bash", str(script_path)]
        after = _AFTER.search(script_path.read_text())
        if after:
            argv = [sys.executable, "-c", _WAIT_THEN_RUN, str(_pid(after.group(1))),
                    str(script_path)]
        out = open(run_dir / "job.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=run_dir, start_new_session=True)
        out.close()
        return f"local-{proc.pid}"

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_pid(job_id), signal.SIGTERM)

    def state(self, job_id: str) -> JobState:
        try:
            proc = psutil.Process(_pid(job_id))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return JobState.UNKNOWN
            return JobState.RUNNING
        except psutil.NoSuchProcess:
            return JobState.UNKNOWN  # finished: run.json has the outcome

    def allocation_from_env(self, env: Mapping[str, str], *, default_cpus: int,
                            default_gpus: int, requested_nodes: int = 1,
                            exclusive: bool = False) -> AllocationInfo:
        # The job script execs `hpcray up`, so its pid is the job's.
        job_id = f"local-{os.getpid()}"
        names = local_node_names(requested_nodes, env.get(LOCAL_JOB_TAG))
        return AllocationInfo("local", job_id,
                              [NodeResources(n, default_cpus, default_gpus) for n in names])
