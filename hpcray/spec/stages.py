"""The `stages:` section: compute stages run as Ray tasks (functions or executables)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from hpcray.spec.containers import ContainerSpec
from hpcray.spec.models import StrictModel
from hpcray.spec.resources import Resources

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,39}$")


class FanOut(StrictModel):
    """One task per item: a list, the files a glob matches, or every point of a grid."""

    items: list[Any] | None = None
    glob: str | None = Field(None, description="Relative to the workflow file's directory.")
    grid: dict[str, list[Any]] | None = Field(
        None, description="Cartesian product; each task gets one dict of values.")

    @model_validator(mode="after")
    def _exactly_one(self) -> FanOut:
        given = [k for k in ("items", "glob", "grid") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'items', 'glob', 'grid'"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.grid is not None and (not self.grid or any(not v for v in self.grid.values())):
            raise ValueError("every grid axis needs at least one value")
        return self


class LaunchSpec(StrictModel):
    """An executable started on several nodes at once by the allocation's launcher (srun,
    mpiexec, ...): an MPI program. `resources` are per process."""

    nodes: int = Field(2, ge=1, description="Distinct nodes.")
    per_node: int = Field(1, ge=1, description="Processes (ranks) on each node; each node "
                          "reserves `per_node` times the stage's resources.")


class StageSpec(StrictModel):
    name: str
    function: str | None = Field(None, description="'module:function', importable from the "
                                                   "workflow directory.")
    command: list[str] | None = Field(
        None, description="An executable and its arguments; {item}, {index}, {stage}, "
                          "{run_dir} and grid keys are filled in per task.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the "
                                 "function (of the class's constructor with `actors`).")
    actors: int | None = Field(
        None, ge=1, description="Stateful stage: `function` names a class; this many actors "
        "each build it once with `args` (load a model, open a file) and then take the "
        "stage's items in turn, one call `instance(item)` per task.")
    each: FanOut | None = Field(None, description="Fan-out: one task per item.")
    launch: LaunchSpec | None = Field(None, description="Executables only: start the command "
                                      "on several nodes through the site's launcher (MPI).")
    container: ContainerSpec | None = Field(
        None, description="Executables only: run the command in this image (with `launch`: "
        "each rank in it).")
    stream_from: str | None = Field(
        None, description="One task per output of this stage, started as each output appears.")
    after: list[str] = Field(default_factory=list,
                             description="Stages whose tasks must all finish first.")
    resources: Resources = Field(default_factory=Resources)
    services: list[str] = Field(default_factory=list,
                                description="Services the stage calls (ready before it starts).")
    retries: int = Field(0, ge=0, description="Extra attempts for a failing task.")
    timeout: float | None = Field(None, gt=0, description="Seconds per task attempt.")
    max_in_flight: int = Field(64, ge=1, description="Tasks of this stage running at once; a "
                               "streaming producer pauses while this many outputs wait.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _STAGE_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid stage name; use lower-case letters, "
                             "digits, _ and - (at most 40), starting with a letter")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @model_validator(mode="after")
    def _what_runs(self) -> StageSpec:
        if (self.function is None) == (self.command is None):
            raise ValueError("give exactly one of 'function' ('module:function') or 'command'")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"function {self.function!r} must be 'module:function'")
        if self.command is not None and not self.command:
            raise ValueError("command is empty")
        if self.actors is not None and self.function is None:
            raise ValueError("'actors' keeps instances of a class alive: give 'function' "
                             "('module:Class')")
        if self.container is not None and self.command is None:
            raise ValueError("'container' runs an executable in an image: give 'command' (a "
                             "function stage runs in the Ray worker's own Python; put the whole "
                             "cluster in an image with allocation.container)")
        if self.launch is not None and self.command is None:
            raise ValueError("'launch' starts a command on several nodes: give 'command'")
        if self.each is not None and self.stream_from is not None:
            raise ValueError("give either 'each' or 'stream_from', not both")
        if self.name in self.after or self.stream_from == self.name:
            raise ValueError(f"stage {self.name!r} cannot depend on itself")
        return self

    @property
    def upstream(self) -> list[str]:
        return [*self.after, *([self.stream_from] if self.stream_from else [])]


def check_stage_graph(stages: list[StageSpec], services: list[str] | None) -> list[str]:
    """Stage names in an order where every stage comes after what it depends on. Raises
    ValueError for duplicates, unknown stages, cycles and (unless `services` is None)
    unknown services."""
    names = [s.name for s in stages]
    for name in set(names):
        if names.count(name) > 1:
            raise ValueError(f"two stages are named {name!r}")
    for stage in stages:
        for dep in stage.upstream:
            if dep not in names:
                raise ValueError(f"stage {stage.name!r} depends on unknown stage {dep!r}; "
                                 f"stages: {', '.join(names)}")
        for svc in stage.services if services is not None else []:
            if svc not in (services or []):
                raise ValueError(f"stage {stage.name!r} uses unknown service {svc!r}; "
                                 f"services: {', '.join(services or []) or 'none'}")
    order: list[str] = []
    while len(order) < len(stages):
        ready = [s.name for s in stages if s.name not in order
                 and all(d in order for d in s.upstream)]
        if not ready:
            cycle = sorted(n for n in names if n not in order)
            raise ValueError(f"stages {', '.join(cycle)} wait for each other (a cycle)")
        order.extend(ready)
    return order
