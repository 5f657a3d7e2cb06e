"""The workflow file as typed models. Unknown keys are errors (extra='forbid')."""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from hpcray.spec.base import StrictModel
from hpcray.spec.containers import ContainerSpec
from hpcray.spec.walltime import parse_walltime

# Values that end up inside a job script directive or command line.
_TOKEN = re.compile(r"^[A-Za-z0-9_.,:@%+=/\-]+$")
# Directives are comment lines, but we still refuse anything a shell would act on.
_DIRECTIVE_FORBIDDEN = re.compile(r"[\n\r\x00;&|$`<>(){}\\'!*?~#]")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(
            f"{value!r} is not allowed here; use letters, digits and _ . , : @ % + = / - only")
    return value


def _directive(value: str) -> str:
    bad = _DIRECTIVE_FORBIDDEN.search(value)
    if bad:
        raise ValueError(
            f"directive {value!r} contains {bad.group()!r}; newlines and shell metacharacters "
            "are refused so nothing can be injected into the job script")
    if not value.strip():
        raise ValueError("empty directive")
    return value.strip()


def _setup_line(value: str) -> str:
    if any(c in value for c in "\n\r\x00"):
        raise ValueError(
            f"setup line {value!r} contains a newline; give one shell line per list item")
    return value


def _walltime(value: Any) -> int:
    return parse_walltime(value)


Token = Annotated[str, AfterValidator(_token)]
Directive = Annotated[str, AfterValidator(_directive)]
SetupLine = Annotated[str, AfterValidator(_setup_line)]
# Serialised as '<n>s' so that a dumped workflow reads back the same (a bare int means minutes).
Seconds = Annotated[int, BeforeValidator(_walltime),
                    PlainSerializer(lambda v: f"{v}s", return_type=str, when_used="json")]


class RelaySpec(StrictModel):
    """Carry a run past its walltime: at the warning, a successor job is submitted (held until
    this one ends) and resumes the same run (docs/elastic.md#relay)."""

    max_jobs: int = Field(2, ge=2, le=100, description="Jobs in the chain, this one included.")


class ElasticSpec(StrictModel):
    """Grow the run by worker-only batch jobs while work waits that no node can take, and
    release a worker job once its nodes sit idle (docs/elastic.md#adapt)."""

    max_jobs: int = Field(1, ge=1, le=64, description="Worker jobs at most at once.")
    nodes_per_job: int = Field(1, ge=1, le=100_000, description="Nodes of each worker job.")
    grow_after: Seconds = Field(30, description="Seconds work waits unplaced before a grow.")
    idle_after: Seconds = Field(300, description="Seconds a worker job's nodes sit idle "
                                "before it is released.")
    walltime: Seconds | None = Field(None, description="Each worker job's walltime; default: "
                                     "what is left of the main job's.")
    partition: Token | None = Field(None, description="Partition or queue of the worker jobs; "
                                    "default: the main job's.")
    interval: float = Field(2.0, ge=0.5, le=60, description="Seconds between two looks "
                            "(each reads Ray's control store and run.json).")


class AllocationSpec(StrictModel):
    """What to ask the batch scheduler for."""

    nodes: int = Field(1, ge=1, description="Number of nodes.")
    walltime: Seconds = Field(1800, description="Walltime; stored in seconds.")
    account: Token | None = Field(None, description="Project/account to charge.")
    partition: Token | None = Field(
        None, validation_alias=AliasChoices("partition", "queue"),
        description="Partition (Slurm) or queue (PBS, LSF, Flux); 'queue' is accepted too.")
    qos: Token | None = None
    cpus_per_node: int | None = Field(
        None, ge=1, description="CPUs per node for Ray; default: what the allocation gives.")
    gpus_per_node: int | None = Field(
        None, ge=0, description="GPUs per node to request; default: the site's count.")
    exclusive: bool | None = Field(
        None, description="Whole nodes; default from the site profile.")
    job_name: Token | None = None
    directives: list[Directive] = Field(
        default_factory=list, description="Extra scheduler directives, passed through verbatim.")
    setup: list[SetupLine] = Field(
        default_factory=list,
        description="Shell lines run before hpcray starts (module load, conda activate, ...).")
    env: dict[str, str] = Field(default_factory=dict, description="Variables exported (quoted).")
    walltime_warning: int = Field(
        120, ge=10, description="Seconds before the walltime at which hpcray drains, tears down.")
    python: str | None = Field(
        None, description="Python interpreter inside the allocation; default: the submitter's. "
        "With `container`, the image's interpreter that runs the node agents (default python3).")
    container: ContainerSpec | None = Field(
        None, description="Run every node agent, and so Ray and everything it starts, in this "
        "image (docs/containers.md).")
    relay: RelaySpec | None = Field(
        None, description="Continue the run in a successor job at the walltime warning.")

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not a valid identifier")
            if "\x00" in str(value):
                raise ValueError(f"environment variable {name} contains a NUL byte")
        return {k: str(v) for k, v in env.items()}

    @model_validator(mode="after")
    def _warning_fits(self) -> AllocationSpec:
        if self.walltime_warning >= self.walltime:
            raise ValueError(
                f"walltime_warning ({self.walltime_warning}s) must be shorter than the walltime "
                f"({self.walltime}s)")
        return self


class RaySpec(StrictModel):
    """How Ray is started on the nodes."""

    dashboard: bool = Field(False, description="Start the Ray dashboard (bound to the head node).")
    head_timeout: float = Field(180, gt=0, description="Seconds for the head to come up.")
    join_timeout: float = Field(300, gt=0, description="Seconds for all nodes to join.")
    teardown_grace: float = Field(10, ge=0, description="Seconds between TERM and KILL.")
    port_base: int | None = Field(
        None, ge=1024, le=64000, description="First port of the job's block; default from job id.")
    object_store_memory: int | None = Field(None, ge=78_643_200, description="Bytes per node.")
    spill_dir: str | None = Field(None, description="Object spilling directory (node-local).")
    temp_root: str = Field("/tmp", description="Where the short per-job temp dir goes.")


class EndpointsSpec(StrictModel):
    """How services are published besides the handle inside Ray. The HTTP API is private to
    the allocation by default; reaching it from further away is the user's explicit choice,
    and then only with a bearer token."""

    http: bool = Field(True, description="HTTP: POST /<service> and the OpenAI-compatible "
                       "API under /v1.")
    listen: Literal["head", "loopback", "any"] = Field(
        "head", description="Where HTTP listens: the head's address on the allocation network "
        "(head), 127.0.0.1 on the head node (loopback), or every interface (any: needs token).")
    token: bool = Field(False, description="Every HTTP request must carry 'Authorization: "
                        "Bearer <token>'; the token is made per run, in <run>/secrets/http-token "
                        "(0600), and named in endpoints.json and HPCRAY_HTTP_TOKEN_FILE.")

    @model_validator(mode="after")
    def _any_needs_token(self) -> EndpointsSpec:
        if self.http and self.listen == "any" and not self.token:
            raise ValueError("listen: any opens the services beyond the allocation's network; "
                             "set token: true as well")
        return self


class DriverSpec(StrictModel):
    """What runs once the cluster is up: a command, or a Python function."""

    command: list[str] | None = None
    function: str | None = Field(None, description="'module:function', called with args.")
    args: dict[str, Any] = Field(default_factory=dict)
    cwd: str | None = Field(None, description="Working directory; default: the workflow's.")

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("function")
    @classmethod
    def _function(cls, value: str | None) -> str | None:
        if value is not None and not _FUNCTION.match(value):
            raise ValueError(f"{value!r} is not of the form 'package.module:function'")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> DriverSpec:
        if (self.command is None) == (self.function is None):
            raise ValueError("give exactly one of 'command' or 'function'")
        if self.command is not None and not self.command:
            raise ValueError("command is empty")
        if self.args and self.function is None:
            raise ValueError("'args' is for 'function'; put arguments in 'command'")
        return self


def _reserved(section: str):
    def check(value: list[Any]) -> list[Any]:
        if value:
            raise ValueError(
                f"the '{section}' section is not supported by this hpcray version yet; "
                "leave it empty")
        return value
    return AfterValidator(check)


class Workflow(StrictModel):
    """A whole workflow file."""

    name: str = Field(description="Short name; used for the job name and run ids.")
    site: str | None = Field(None, description="Site profile; the CLI's --site overrides it.")
    allocation: AllocationSpec = Field(default_factory=AllocationSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    driver: DriverSpec | None = None
    run_root: str | None = Field(None, description="Directory for run dirs; default ./hpcray-runs.")
    services: list[ServiceSpec] = Field(
        default_factory=list, description="Model services, started before the driver.")
    endpoints: EndpointsSpec = Field(default_factory=EndpointsSpec)
    stages: list[StageSpec] = Field(
        default_factory=list, description="Compute stages, run after the services are ready.")
    elastic: ElasticSpec | None = Field(
        None, description="Grow and shrink the run by worker jobs within these bounds.")
    hpo: Annotated[dict[str, Any], _reserved("hpo")] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid name; start with a letter, then letters, digits, "
                "_ . - (at most 63)")
        return value

    @field_validator("site")
    @classmethod
    def _site(cls, value: str | None) -> str | None:
        return None if value is None else _token(value)

    @field_validator("services")
    @classmethod
    def _service_graph(cls, value: list[ServiceSpec]) -> list[ServiceSpec]:
        check_service_graph(value)
        return value

    @field_validator("stages")
    @classmethod
    def _stage_graph(cls, value: list[StageSpec]) -> list[StageSpec]:
        check_stage_graph(value, None)
        return value

    @model_validator(mode="after")
    def _stage_services(self) -> Workflow:
        check_stage_graph(self.stages, [s.name for s in self.services])
        for stage in self.stages:
            if stage.launch and stage.launch.nodes > self.allocation.nodes:
                raise ValueError(f"stage {stage.name!r} launches on {stage.launch.nodes} nodes "
                                 f"but the allocation has {self.allocation.nodes}")
        return self


Scheduler = Literal["slurm", "pbs", "lsf", "flux", "local"]

from hpcray.spec.services import ServiceSpec, check_service_graph  # noqa: E402
from hpcray.spec.stages import StageSpec, check_stage_graph  # noqa: E402

Workflow.model_rebuild()
