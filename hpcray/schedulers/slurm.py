"""Slurm: sbatch/scancel/scontrol, and the SLURM_* environment inside the job."""

from __future__ import annotations

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
from hpcray.schedulers.hostlist import expand_counts, expand_hostlist
from hpcray.spec.walltime import hhmmss

_STATES = {
    "PENDING": JobState.QUEUED, "CONFIGURING": JobState.QUEUED, "REQUEUED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED, "FAILED": JobState.FAILED, "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "BOOT_FAIL": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED, "PREEMPTED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT, "DEADLINE": JobState.TIMEOUT,
}


_TRES_GPU = re.compile(r"^(?:gres[/:])?gpu(?::[\w.-]+)?[=:](\d+)$")


def gpus_from_tres(text: str) -> int | None:
    """GPU count in ``SLURM_TRES_PER_TASK`` (``cpu=32,gres/gpu=4``, ``gres/gpu:a100=4``)."""
    for item in text.split(","):
        m = _TRES_GPU.match(item.strip())
        if m:
            return int(m.group(1))
    return None


def _gpu_count(text: str) -> int | None:
    """``4`` or ``a100:4`` (SLURM_GPUS_PER_NODE, SLURM_GPUS_ON_NODE)."""
    last = text.strip().rsplit(":", 1)[-1]
    return int(last) if last.isdigit() else None


_CONSTRAINT = re.compile(r"^(?:--constraint[= ]|-C\s*)(.+)$")


def merge_constraints(directives: list[str]) -> list[str]:
    """sbatch keeps only the last --constraint: the site's (Perlmutter's gpu), the storage
    it needs (Frontier's nvme) and the workflow's become one, joined with '&', in the
    place of the first."""
    features = [m.group(1).strip().strip('"') for d in directives if (m := _CONSTRAINT.match(d))]
    if len(features) < 2:
        return directives
    merged, out = "&".join(dict.fromkeys(features)), []
    for d in directives:
        if not _CONSTRAINT.match(d):
            out.append(d)
        elif merged:
            out.append(f"--constraint={merged}")
            merged = ""
    return out


class Slurm(Scheduler):
    name = "slurm"
    directive_prefix = "#SBATCH"

    def directives(self, req: JobRequest) -> list[str]:
        d = [
            f"--job-name={req.job_name}",
            f"--nodes={req.nodes}",
            "--ntasks-per-node=1",
            f"--time={hhmmss(req.walltime)}",
            f"--output={req.output}",
            f"--error={req.output}",
            "--open-mode=append",
            # B: signal only the batch shell (hpcray up), which drains and tears down.
            f"--signal=B:USR2@{req.walltime_warning}",
        ]
        if req.account:
            d.append(f"--account={req.account}")
        if req.partition:
            d.append(f"--partition={req.partition}")
        if req.qos:
            d.append(f"--qos={req.qos}")
        if req.exclusive:
            d.append("--exclusive")
        elif req.cpus_per_node:
            d.append(f"--cpus-per-task={req.cpus_per_node}")
        if req.memory is not None:
            d.append(f"--mem={req.memory}")
        if req.gpus_per_node:
            d.append(f"--gpus-per-node={req.gpus_per_node}")
        return merge_constraints([*d, *req.directives])

    def dependency(self, job_id: str) -> str:
        return f"--dependency=afterany:{job_id}"

    def submit(self, script_path: Path, run_dir: Path) -> str:
        out = run_command(["sbatch", "--parsable", str(script_path)]).strip()
        job_id = out.split(";", 1)[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch printed no job id: {out!r}")
        return job_id

    def cancel(self, job_id: str) -> None:
        run_command(["scancel", job_id])

    def state(self, job_id: str) -> JobState:
        try:
            out = run_command(["scontrol", "show", "job", "-o", job_id])
        except SchedulerError:
            return JobState.UNKNOWN  # purged from the controller (MinJobAge) or unknown id
        m = re.search(r"\bJobState=(\S+)", out)
        return _STATES.get(m.group(1), JobState.UNKNOWN) if m else JobState.UNKNOWN

    def memory_from_env(self, env: Mapping[str, str]) -> int | None:
        """SLURM_MEM_PER_NODE (MB; with --mem=0 the node's whole memory), else
        SLURM_MEM_PER_CPU times the CPUs on the node (a site's per-CPU default)."""
        per_node = env.get("SLURM_MEM_PER_NODE", "")
        if per_node.isdigit() and int(per_node) > 0:
            return int(per_node) * 2**20
        per_cpu, cpus = env.get("SLURM_MEM_PER_CPU", ""), env.get("SLURM_CPUS_ON_NODE", "")
        if per_cpu.isdigit() and cpus.isdigit() and int(per_cpu) > 0:
            return int(per_cpu) * int(cpus) * 2**20
        return None

    def allocation_from_env(self, env: Mapping[str, str], *, default_cpus: int,
                            default_gpus: int, requested_nodes: int = 1,
                            exclusive: bool = False) -> AllocationInfo:
        job_id = env.get("SLURM_JOB_ID")
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not job_id or not nodelist:
            raise SchedulerError("not inside a Slurm job: SLURM_JOB_ID/SLURM_JOB_NODELIST unset")
        hosts = expand_hostlist(nodelist)
        cpus = [default_cpus] * len(hosts)
        if env.get("SLURM_JOB_CPUS_PER_NODE"):
            counts = expand_counts(env["SLURM_JOB_CPUS_PER_NODE"])
            if len(counts) == len(hosts):
                cpus = counts
        gpus = default_gpus
        for source in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
            if env.get(source) and (n := _gpu_count(env[source])) is not None:
                gpus = n
                break
        else:
            if env.get("SLURM_TRES_PER_TASK") and (
                    n := gpus_from_tres(env["SLURM_TRES_PER_TASK"])) is not None:
                gpus = n * int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0] or 1)
            elif env.get("SLURM_JOB_GPUS"):
                gpus = len([g for g in env["SLURM_JOB_GPUS"].split(",") if g])
        nodes = [NodeResources(h, c, gpus) for h, c in zip(hosts, cpus, strict=True)]
        return AllocationInfo("slurm", job_id, nodes)
