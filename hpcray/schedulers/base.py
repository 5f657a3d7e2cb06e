"""What every scheduler module provides: job script, submit/cancel/state, allocation nodes."""

from __future__ import annotations

import shlex
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import ClassVar

import jinja2

from hpcray.errors import SchedulerError


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT)


@dataclass(frozen=True)
class JobRequest:
    """Everything a job script needs, already validated against the site."""

    job_name: str
    nodes: int
    walltime: int
    run_dir: str
    python: str
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    exclusive: bool = True
    memory: str | None = None  # per node, as --mem takes it ("208G"; "0": all of the node's)
    directives: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    walltime_warning: int = 120
    walltime_signal: bool = True
    select_suffix: str = ""
    # allocation.container: what the launcher runs on each node (the container's command
    # line, then the image's Python with `hpcray node`), shown in the script; and that Python
    agent_argv: tuple[str, ...] = ()
    agent_python: str | None = None
    container: str = ""  # "<runtime> image <image>", for the script's comment
    # the jobs of an elastic or relayed run (docs/elastic.md): what `hpcray up` is told
    # (`--job w1`: a worker job joins the run's cluster; `--job r1`: a successor resumes
    # it), where this job writes its output (jobs/<tag>/job.out), and the job it waits for
    up_args: tuple[str, ...] = ()
    output_path: str | None = None
    after_job: str | None = None

    @property
    def output(self) -> str:
        return self.output_path or f"{self.run_dir}/job.out"


@dataclass(frozen=True)
class NodeResources:
    name: str
    cpus: int
    gpus: int


@dataclass
class AllocationInfo:
    """The nodes the scheduler gave this job, read inside the job from its environment."""

    scheduler: str
    job_id: str
    nodes: list[NodeResources] = field(default_factory=list)


def _quote(value: object) -> str:
    return shlex.quote(str(value))


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FunctionLoader(
        lambda name: resources.files("hpcray.jobscripts").joinpath(name).read_text()),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_TEMPLATES.filters["q"] = _quote


def run_command(argv: list[str], *, input: str | None = None, timeout: float = 60) -> str:
    """Run a scheduler command; failures become SchedulerError with its stderr."""
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SchedulerError(f"{argv[0]} not found: is this a login node of the site?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{' '.join(argv)} did not answer within {timeout:.0f}s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        raise SchedulerError(f"{' '.join(argv)} failed: {last}")
    return proc.stdout


class Scheduler(ABC):
    """One batch system. Subclasses are small: directives, commands, environment parsing."""

    name: ClassVar[str]
    directive_prefix: ClassVar[str]
    template: ClassVar[str] = "batch.sh.j2"

    @abstractmethod
    def directives(self, req: JobRequest) -> list[str]:
        """Scheduler options, without the prefix, in the order they appear in the script."""

    def dependency(self, job_id: str) -> str:
        """The directive that holds a job until `job_id` has ended, however it ended (a relay's
        successor waits for its predecessor: docs/elastic.md)."""
        raise SchedulerError(f"{self.name} has no job dependencies")

    def job_script(self, req: JobRequest) -> str:
        """The exact text that submit() hands to the scheduler."""
        directives = self.directives(req)
        if req.after_job:
            directives.append(self.dependency(req.after_job))
        return _TEMPLATES.get_template(self.template).render(
            prefix=self.directive_prefix, directives=directives, req=req,
            scheduler=self.name)

    @abstractmethod
    def submit(self, script_path: Path, run_dir: Path) -> str:
        """Submit and return the job id."""

    @abstractmethod
    def cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def state(self, job_id: str) -> JobState: ...

    def memory_from_env(self, env: Mapping[str, str]) -> int | None:
        """Bytes per node the job holds, where the scheduler says (None: not said)."""
        return None

    @abstractmethod
    def allocation_from_env(self, env: Mapping[str, str], *, default_cpus: int,
                            default_gpus: int, requested_nodes: int = 1,
                            exclusive: bool = False) -> AllocationInfo:
        """Read the allocation inside the job. Defaults (the request, from the site profile)
        fill what the environment leaves out; `exclusive`: the job asked for whole nodes."""
