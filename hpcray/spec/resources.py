"""What one unit of work (a service replica, a stage task) reserves on a node."""

from __future__ import annotations

from pydantic import Field, model_validator

from hpcray.spec.models import StrictModel


class Resources(StrictModel):
    """Per replica or per task. Ray places each unit on a node that has all of it."""

    cpus: float = Field(1, ge=0)
    gpus: float = Field(0, ge=0)
    memory: int | None = Field(None, ge=0, description="Bytes reserved per unit.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom resources.")
    node: str | None = Field(None, description="Pin every unit to this node (its name).")
    nodes: list[str] | None = Field(
        None, min_length=1, description="Any of these nodes: a partition of the allocation.")

    @model_validator(mode="after")
    def _one_constraint(self) -> Resources:
        if self.node and self.nodes:
            raise ValueError("give either 'node' or 'nodes', not both")
        return self
