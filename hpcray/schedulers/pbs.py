"""PBS Pro (Polaris, Aurora): qsub/qdel/qstat, and PBS_NODEFILE inside the job."""

from __future__ import annotations

import json
import os
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
from hpcray.spec.walltime import hhmmss

_STATES = {"Q": JobState.QUEUED, "H": JobState.QUEUED, "W": JobState.QUEUED,
           "T": JobState.QUEUED, "B": JobState.RUNNING, "R": JobState.RUNNING,
           "E": JobState.RUNNING, "S": JobState.RUNNING, "U": JobState.RUNNING}


def pbs_cpus(env: Mapping[str, str], profile_cpus: int, exclusive: bool) -> int:
    """CPUs per node for Ray (GPUs follow the same rule). A whole-node job's select names no
    ncpus (hpcray writes `select=N:system=...` with place=excl), so PBS's NCPUS is the
    chunk's default request, 1 on ALCF's machines, not the node: the profile's count is
    used. A shared-node job asked for `:ncpus=C`; NCPUS is then what it holds and is used."""
    ncpus = env.get("NCPUS", "")
    if exclusive or not ncpus.isdigit():
        return profile_cpus
    return int(ncpus)


class Pbs(Scheduler):
    name = "pbs"
    directive_prefix = "#PBS"

    def directives(self, req: JobRequest) -> list[str]:
        select = f"select={req.nodes}{req.select_suffix}"
        if req.cpus_per_node and not req.exclusive:
            select += f":ncpus={req.cpus_per_node}"
        if req.gpus_per_node and not req.exclusive:
            select += f":ngpus={req.gpus_per_node}"
        d = [
            f"-N {req.job_name}",
            f"-l {select}",
            f"-l walltime={hhmmss(req.walltime)}",
            f"-o {req.output}",
            "-j oe",
        ]
        if req.account:
            d.append(f"-A {req.account}")
        if req.partition:
            d.append(f"-q {req.partition}")
        # one chunk per host; whole hosts unless the site shares nodes
        d.append("-l place=scatter:excl" if req.exclusive else "-l place=scatter")
        d.extend(req.directives)
        return d

    def dependency(self, job_id: str) -> str:
        return f"-W depend=afterany:{job_id}"

    def submit(self, script_path: Path, run_dir: Path) -> str:
        out = run_command(["qsub", str(script_path)]).strip()
        if not out:
            raise SchedulerError("qsub printed no job id")
        return out.splitlines()[-1]

    def cancel(self, job_id: str) -> None:
        run_command(["qdel", job_id])

    def state(self, job_id: str) -> JobState:
        try:
            out = run_command(["qstat", "-fx", "-F", "json", job_id])
        except SchedulerError:
            return JobState.UNKNOWN
        return self.state_from_qstat_json(out, job_id)

    @staticmethod
    def state_from_qstat_json(text: str, job_id: str) -> JobState:
        jobs = json.loads(text).get("Jobs", {})
        info = jobs.get(job_id) or next(iter(jobs.values()), None)
        if not info:
            return JobState.UNKNOWN
        letter = info.get("job_state", "")
        if letter in ("F", "X"):
            status = int(info.get("Exit_status", -1))
            if status == 0:
                return JobState.COMPLETED
            # PBS: 271 = killed by qdel (SIGTERM+256); -11/-29 walltime
            if status in (271, 265):
                return JobState.CANCELLED
            if status in (-11, -29):
                return JobState.TIMEOUT
            return JobState.FAILED
        return _STATES.get(letter, JobState.UNKNOWN)

    def allocation_from_env(self, env: Mapping[str, str], *, default_cpus: int,
                            default_gpus: int, requested_nodes: int = 1,
                            exclusive: bool = False) -> AllocationInfo:
        job_id, nodefile = env.get("PBS_JOBID"), env.get("PBS_NODEFILE")
        if not job_id or not nodefile:
            raise SchedulerError("not inside a PBS job: PBS_JOBID/PBS_NODEFILE unset")
        if not os.path.exists(nodefile):
            raise SchedulerError(f"PBS_NODEFILE {nodefile} does not exist")
        hosts: list[str] = []
        for line in Path(nodefile).read_text().splitlines():
            host = line.strip()
            if host and host not in hosts:  # one line per MPI rank slot; keep first order
                hosts.append(host)
        cpus = pbs_cpus(env, default_cpus, exclusive)
        gpus = default_gpus if exclusive or not env.get("NGPUS", "").isdigit() \
            else int(env["NGPUS"])  # as for CPUs: a whole-node select names no ngpus
        return AllocationInfo("pbs", job_id, [NodeResources(h, cpus, gpus) for h in hosts])
