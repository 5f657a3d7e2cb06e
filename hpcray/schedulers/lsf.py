"""IBM LSF: bsub/bkill/bjobs, and LSB_MCPU_HOSTS / LSB_DJOB_HOSTFILE inside the job."""

from __future__ import annotations

import os
import re
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
from hpcray.spec.walltime import lsf_minutes

_STATES = {"PEND": JobState.QUEUED, "PSUSP": JobState.QUEUED, "WAIT": JobState.QUEUED,
           "RUN": JobState.RUNNING, "USUSP": JobState.RUNNING, "SSUSP": JobState.RUNNING,
           "DONE": JobState.COMPLETED, "EXIT": JobState.FAILED}

# CSM systems (Summit, Lassen) list the launch node first with one slot.
_LAUNCH_NODE = re.compile(r"^(batch|login)\d*$")


class Lsf(Scheduler):
    name = "lsf"
    directive_prefix = "#BSUB"

    def directives(self, req: JobRequest) -> list[str]:
        d = [
            f"-J {req.job_name}",
            f"-nnodes {req.nodes}",
            f"-W {lsf_minutes(req.walltime)}",
            f"-o {req.output}",
            f"-e {req.output}",
            # warning action: USR2 to the job, walltime_warning before the limit (minutes)
            "-wa USR2",
            f"-wt {lsf_minutes(req.walltime_warning)}",
        ]
        if req.account:
            d.append(f"-P {req.account}")
        if req.partition:
            d.append(f"-q {req.partition}")
        d.extend(req.directives)
        return d

    def dependency(self, job_id: str) -> str:
        return f"-w \"ended({job_id})\""  # quoted, as IBM writes it

    def submit(self, script_path: Path, run_dir: Path) -> str:
        # bsub reads #BSUB lines only from standard input.
        out = run_command(["bsub"], input=script_path.read_text())
        m = re.search(r"Job <(\d+)>", out)
        if not m:
            raise SchedulerError(f"bsub printed no job id: {out.strip()!r}")
        return m.group(1)

    def cancel(self, job_id: str) -> None:
        run_command(["bkill", job_id])

    def state(self, job_id: str) -> JobState:
        try:
            out = run_command(["bjobs", "-noheader", "-o", "stat", job_id]).strip()
        except SchedulerError:
            return JobState.UNKNOWN
        return _STATES.get(out.split()[0] if out else "", JobState.UNKNOWN)

    def allocation_from_env(self, env: Mapping[str, str], *, default_cpus: int,
                            default_gpus: int, requested_nodes: int = 1,
                            exclusive: bool = False) -> AllocationInfo:
        job_id = env.get("LSB_JOBID")
        if not job_id:
            raise SchedulerError("not inside an LSF job: LSB_JOBID unset")
        slots: dict[str, int] = {}
        if env.get("LSB_MCPU_HOSTS"):
            fields = env["LSB_MCPU_HOSTS"].split()
            for host, count in zip(fields[::2], fields[1::2], strict=True):
                slots[host] = slots.get(host, 0) + int(count)
        elif env.get("LSB_DJOB_HOSTFILE") and os.path.exists(env["LSB_DJOB_HOSTFILE"]):
            for line in Path(env["LSB_DJOB_HOSTFILE"]).read_text().split():
                slots[line] = slots.get(line, 0) + 1
        else:
            raise SchedulerError("LSF job without LSB_MCPU_HOSTS or LSB_DJOB_HOSTFILE")
        hosts = [h for h in slots if not _LAUNCH_NODE.match(h.split(".")[0])]
        nodes = [NodeResources(h, default_cpus if default_cpus else slots[h], default_gpus)
                 for h in hosts]
        return AllocationInfo("lsf", job_id, nodes)
