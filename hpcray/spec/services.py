"""The `services:` section: model services run as Ray Serve deployments."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hpcray.spec.models import StrictModel
from hpcray.spec.resources import Resources

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,39}$")


class LifetimeSpec(StrictModel):
    """Until the workflow ends (default), or at most `seconds` after the service is ready."""

    seconds: float | None = Field(None, gt=0)


class ServiceSpec(StrictModel):
    name: str
    deployment: str = Field(description="Short name from deployments/ or 'module:Class'.")
    args: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")
    replicas: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    readiness_timeout: float = Field(300, gt=0, description="Seconds until all replicas run.")
    health_check_period: float = Field(10, gt=0)
    health_check_timeout: float = Field(30, gt=0)
    max_ongoing_requests: int = Field(16, ge=1)
    transport: Literal["direct", "serve"] = Field(
        "direct", description="How handles reach replicas: each replica's own ZeroMQ socket "
        "(direct, sub-millisecond) or Ray Serve's DeploymentHandle (serve).")
    after: list[str] = Field(default_factory=list, description="Services that must be ready first.")
    lifetime: LifetimeSpec = Field(default_factory=LifetimeSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVICE_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid service name; use lower-case letters, "
                             "digits, _ and - (at most 40), starting with a letter")
        return value

    @model_validator(mode="after")
    def _not_after_itself(self) -> ServiceSpec:
        if self.name in self.after:
            raise ValueError(f"service {self.name!r} cannot start after itself")
        return self


def check_service_graph(services: list[ServiceSpec]) -> list[list[ServiceSpec]]:
    """Start levels: every service of a level only waits for services of earlier levels.
    Raises ValueError for duplicates, unknown names in `after`, and cycles."""
    by_name: dict[str, ServiceSpec] = {}
    for svc in services:
        if svc.name in by_name:
            raise ValueError(f"two services are named {svc.name!r}")
        by_name[svc.name] = svc
    for svc in services:
        for dep in svc.after:
            if dep not in by_name:
                raise ValueError(f"service {svc.name!r} starts after unknown service {dep!r}; "
                                 f"services: {', '.join(by_name)}")
    levels: list[list[ServiceSpec]] = []
    placed: set[str] = set()
    while len(placed) < len(services):
        level = [s for s in services if s.name not in placed and set(s.after) <= placed]
        if not level:
            cycle = sorted(n for n in by_name if n not in placed)
            raise ValueError(
                f"services {', '.join(cycle)} wait for each other (a cycle in 'after')")
        levels.append(level)
        placed |= {s.name for s in level}
    return levels
