"""A site profile: what a machine's nodes have and how its scheduler is driven."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hpcray.spec.base import single_lines
from hpcray.spec.containers import ContainerRuntime, GpuVendor
from hpcray.spec.models import Directive, SetupLine, StrictModel, _token

__all__ = ["GpuVendor", "SiteProfile"]
SchedulerName = Literal["slurm", "pbs", "lsf", "flux", "local"]
LauncherName = Literal["srun", "mpiexec", "jsrun", "blaunch", "flux", "local"]


class SiteProfile(StrictModel):
    name: str
    description: str = ""
    scheduler: SchedulerName
    launcher: LauncherName
    cpus_per_node: int | Literal["auto"] = Field(
        description="Cores a job may use per node ('auto': this machine's, for local).")
    gpus_per_node: int | Literal["auto"] = 0
    gpu_vendor: GpuVendor = "none"
    gpu_memory_gb: float | None = Field(None, gt=0, description="Memory of one GPU device "
                                        "(as the scheduler exposes it: a GCD, a tile).")
    network_interface: str | None = Field(
        None, description="Interface whose address the head binds; None: the hostname's address.")
    head_address: str | None = Field(
        None, description="Format for the head address, e.g. '{host}.hsn.example.gov'.")
    directives: list[Directive] = Field(default_factory=list)
    setup: list[SetupLine] = Field(default_factory=list)
    requires_account: bool = False
    default_partition: str | None = None
    exclusive: bool = True
    max_nodes: int | None = None
    max_walltime: int | None = Field(None, description="Seconds.")
    walltime_signal: bool = Field(
        True, description="The scheduler can send a warning signal before the walltime.")
    spill_dir: str | None = Field(None, description="Node-local object spilling directory.")
    pbs_select: str = Field("", description="PBS: appended to select=N, e.g. ':system=polaris'.")
    container_runtime: ContainerRuntime | None = Field(
        None, description="The runtime a `container:` block uses unless it names its own.")
    container_options: list[str] = Field(
        default_factory=list, description="Flags of that runtime's run command put before a "
        "container's own options (not used when a container names another runtime).")
    docs: str | None = None

    @field_validator("default_partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        return None if value is None else _token(value)

    @field_validator("container_options")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        return single_lines(value, "container option")

    @field_validator("pbs_select")
    @classmethod
    def _select(cls, value: str) -> str:
        return value and _token(value)
