"""Flux: flux batch/cancel/jobs, and ``flux resource list`` inside the job."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from hpcray.errors import SchedulerError
from hpcray.schedulers.base import (
    AllocationInfo,
    JobRequest,
    JobState,
    NodeResources,
    Scheduler,
    run_command,
)
from hpcray.schedulers.hostlist import expand_hostlist

_STATES = {"DEPEND": JobState.QUEUED, "PRIORITY": JobState.QUEUED, "SCHED": JobState.QUEUED,
           "PENDING": JobState.QUEUED, "RUN": JobState.RUNNING, "RUNNING": JobState.RUNNING,
           "CLEANUP": JobState.RUNNING, "COMPLETED": JobState.COMPLETED,
           "FAILED": JobState.FAILED, "CANCELED": JobState.CANCELLED,
           "TIMEOUT": JobState.TIMEOUT}

RESOURCE_FORMAT = "{nnodes} {ncores} {ngpus} {nodelist}"


def parse_resource_list(text: str) -> list[NodeResources]:
    """Output of ``flux resource list -s up -n -o '{nnodes} {ncores} {ngpus} {nodelist}'``."""
    nodes: list[NodeResources] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 4:
            continue
        nnodes, ncores, ngpus, nodelist = int(fields[0]), int(fields[1]), int(fields[2]), fields[3]
        hosts = expand_hostlist(nodelist)
        if nnodes != len(hosts) or nnodes == 0:
            raise SchedulerError(f"flux resource list line does not add up: {line!r}")
        nodes.extend(NodeResources(h, ncores // nnodes, ngpus // nnodes) for h in hosts)
    return nodes


class Flux(Scheduler):
    name = "flux"
    directive_prefix = "# flux:"

    def directives(self, req: JobRequest) -> list[str]:
        d = [
            f"--job-name={req.job_name}",
            f"--nodes={req.nodes}",
            f"--time-limit={int(req.walltime)}s",
            f"--output={req.output}",
            f"--signal=SIGUSR2@{req.walltime_warning}s",
        ]
        if req.exclusive:
            d.append("--exclusive")
        if req.account:
            d.append(f"--bank={req.account}")
        if req.partition:
            d.append(f"--queue={req.partition}")
        if req.gpus_per_node and not req.exclusive:
            d.append(f"--gpus-per-node={req.gpus_per_node}")
        d.extend(req.directives)
        return d

    def dependency(self, job_id: str) -> str:
        return f"--dependency=afterany:{job_id}"

    @staticmethod
    def _flux(*args: str) -> list[str]:
        """A flux command for the instance the run's jobs live in: from inside a Flux job
        (a worker or successor job submitted by the run itself), its parent's, not the
        job's own sub-instance."""
        return ["flux", *(["--parent"] if os.environ.get("FLUX_JOB_ID") else []), *args]

    def submit(self, script_path: Path, run_dir: Path) -> str:
        out = run_command(self._flux("batch", str(script_path))).strip()
        if not out:
            raise SchedulerError("flux batch printed no job id")
        return out.splitlines()[-1]

    def cancel(self, job_id: str) -> None:
        run_command(self._flux("cancel", job_id))

    def state(self, job_id: str) -> JobState:
        try:
            out = run_command(self._flux("jobs", "-n", "-o", "{status}", job_id)).strip()
        except SchedulerError:
            return JobState.UNKNOWN
        return _STATES.get(out.upper(), JobState.UNKNOWN)

    def allocation_from_env(self, env: Mapping[str, str], *, default_cpus: int,
                            default_gpus: int, requested_nodes: int = 1,
                            exclusive: bool = False,
                            resource_list: str | None = None) -> AllocationInfo:
        job_id = env.get("FLUX_JOB_ID")
        if not job_id:
            raise SchedulerError("not inside a Flux job: FLUX_JOB_ID unset")
        if resource_list is None:
            resource_list = subprocess.run(
                ["flux", "resource", "list", "-s", "up", "-n", "-o", RESOURCE_FORMAT],
                capture_output=True, text=True, check=True, timeout=60).stdout
        nodes = parse_resource_list(resource_list)
        if not nodes:
            raise SchedulerError("flux resource list showed no nodes")
        return AllocationInfo("flux", job_id, nodes)
