"""No batch system: the job script runs on this machine as a detached process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil

from hpcray.errors import SchedulerError
from hpcray.schedulers.base import AllocationInfo, JobRequest, JobState, NodeResources, Scheduler


def local_node_names(count: int) -> list[str]:
    host = socket.gethostname().split(".")[0]
    return [host] if count == 1 else [f"{host}-n{i}" for i in range(count)]


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

    def submit(self, script_path: Path, run_dir: Path) -> str:
        out = open(run_dir / "job.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["bash", str(script_path)], stdout=out, stderr=subprocess.STDOUT,
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
        names = local_node_names(requested_nodes)
        return AllocationInfo("local", job_id,
                              [NodeResources(n, default_cpus, default_gpus) for n in names])
