"""A site profile: what a machine's nodes have and how its scheduler is driven."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hpcray.spec.base import single_lines
from hpcray.spec.containers import ContainerRuntime, GpuVendor
from hpcray.spec.models import Directive, Seconds, SetupLine, StrictModel, Token, _token
from hpcray.spec.walltime import hhmmss

__all__ = ["AddressSource", "GpuVendor", "LocalStorage", "QueueLimits", "SiteProfile"]
SchedulerName = Literal["slurm", "pbs", "lsf", "flux", "local"]
LauncherName = Literal["srun", "mpiexec", "jsrun", "blaunch", "flux", "local"]
AddressSource = Literal["interface", "host_format", "hostname"]
QueueOption = Literal["partition", "qos", "queue"]


class QueueLimits(StrictModel):
    """One row of a site's queue table: a queue (Slurm partition or QOS, PBS queue) and the
    jobs it takes. A queue whose walltime limit depends on the node count (Frontier's batch
    bins, Polaris's prod) has one row per bin, under the same name."""

    name: Token
    option: QueueOption = Field(
        "partition", description="How a job names it: --partition, --qos (Slurm), -q (PBS).")
    min_nodes: int = Field(1, ge=1)
    max_nodes: int | None = Field(None, ge=1, description="None: the site states no limit.")
    max_walltime: Seconds
    min_walltime: Seconds | None = None
    per_user: str = Field("", description="Per-user limits, as the site states them.")
    choose: bool = Field(
        True, description="hpcray may pick it by itself; false: only when a workflow names it "
        "(preemptable, premium and debug queues).")
    note: str = ""

    @model_validator(mode="after")
    def _range(self) -> QueueLimits:
        if self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError(f"queue {self.name}: min_nodes {self.min_nodes} > max_nodes "
                             f"{self.max_nodes}")
        return self

    def takes(self, nodes: int, walltime: int) -> bool:
        return (self.holds(nodes) and walltime <= self.max_walltime
                and walltime >= (self.min_walltime or 0))

    def holds(self, nodes: int) -> bool:
        return self.min_nodes <= nodes and (self.max_nodes is None or nodes <= self.max_nodes)

    def limits(self, minimum: bool = False) -> str:
        if self.max_nodes is None:
            nodes = f"{self.min_nodes}+ nodes"
        elif self.min_nodes == self.max_nodes:
            nodes = f"{self.min_nodes} node{'s' if self.min_nodes > 1 else ''}"
        else:
            nodes = f"{self.min_nodes}-{self.max_nodes} nodes"
        text = f"{nodes} up to {hhmmss(self.max_walltime)}"
        if minimum and self.min_walltime:
            text += f" (at least {hhmmss(self.min_walltime)})"
        return text


class LocalStorage(StrictModel):
    """Node-local storage that exists only when the job asks for it (Frontier's NVMe)."""

    path: str = Field(description="Prefix of paths on it, e.g. /mnt/bb/.")
    directive: Directive = Field(description="What the job script adds when a spill_dir or "
                                 "temp_root is on it, e.g. --constraint=nvme.")


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
    address_source: AddressSource | None = Field(
        None, description="Which gives every node's address: the interface, the host name "
        "format (head_address) or the host name. Default: the first of those that is set.")
    directives: list[Directive] = Field(default_factory=list)
    setup: list[SetupLine] = Field(default_factory=list)
    requires_account: bool = False
    default_partition: str | None = None
    exclusive: bool = True
    max_nodes: int | None = None
    max_walltime: int | None = Field(None, description="Seconds.")
    queues: list[QueueLimits] = Field(
        default_factory=list, description="The queue table, in the order hpcray chooses from; "
        "empty: default_partition for every job.")
    queues_source: str | None = Field(None, description="Where the queue table comes from.")
    memory_per_node_gb: float | None = Field(
        None, gt=0, description="Memory a job may request on one node (--mem).")
    default_memory_per_cpu_mb: int | None = Field(
        None, gt=0, description="What the scheduler gives per CPU unless --mem is asked "
        "(Delta: 1000): hpcray then always asks for memory.")
    gpu_account_suffix: str | None = Field(
        None, description="GPU jobs charge an account with this suffix (Delta: -delta-gpu).")
    gpu_account_required: bool = Field(
        False, description="A GPU job's account without the suffix is an error, not a warning.")
    node_local_paths: list[str] = Field(
        default_factory=lambda: ["/tmp", "/var/tmp", "/dev/shm"],
        description="Paths each node has its own copy of: no run directory or job Python "
        "there (nor on a memory filesystem). Empty: the nodes share every path.")
    local_storage: list[LocalStorage] = Field(default_factory=list)
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

    @model_validator(mode="after")
    def _address_source_is_set(self) -> SiteProfile:
        needs = {"interface": self.network_interface, "host_format": self.head_address}
        if self.address_source in needs and not needs[self.address_source]:
            field = "network_interface" if self.address_source == "interface" else "head_address"
            raise ValueError(f"address_source is {self.address_source} but {field} is not set")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> SiteProfile:
        if self.queues and self.default_partition:
            raise ValueError("default_partition is not used with a queue table: put that "
                             "queue's row first")
        if self.default_memory_per_cpu_mb and not self.memory_per_node_gb:
            raise ValueError("default_memory_per_cpu_mb needs memory_per_node_gb (what --mem "
                             "may ask on one node)")
        return self

    @property
    def address_from(self) -> AddressSource:
        if self.address_source:
            return self.address_source
        if self.network_interface:
            return "interface"
        return "host_format" if self.head_address else "hostname"

    @field_validator("pbs_select")
    @classmethod
    def _select(cls, value: str) -> str:
        return value and _token(value)
