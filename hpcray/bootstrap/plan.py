"""The cluster plan: computed once by `hpcray up`, read by every node agent from the run dir."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcray.rundir import RunDir, read_json, write_json_atomic


@dataclass
class NodePlan:
    name: str
    index: int
    cpus: int
    gpus: int


@dataclass
class ClusterPlan:
    cluster_id: str
    job_id: str
    scheduler: str
    gpu_vendor: str
    nodes: list[NodePlan]
    token_path: str
    temp_root: str = "/tmp"
    network_interface: str | None = None
    head_address_format: str | None = None
    address_source: str | None = None
    dashboard: bool = False
    head_timeout: float = 180
    teardown_grace: float = 10
    port_base: int | None = None
    object_store_memory: int | None = None
    spill_dir: str | None = None
    python: str = "python3"
    extra_env: dict[str, str] = field(default_factory=dict)
    up_host: str = ""
    up_pid: int = 0
    # a worker job's plan (jobs/<tag>/plan.json): its nodes join the run's head, none is one
    job_tag: str = "main"
    joins: bool = False

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    def node(self, name: str) -> NodePlan | None:
        """Exact name, else the same short host name (PBS lists FQDNs, hostname is short)."""
        for node in self.nodes:
            if node.name == name:
                return node
        short = name.split(".")[0]
        for node in self.nodes:
            if node.name.split(".")[0] == short:
                return node
        return None

    def is_head(self, node: NodePlan) -> bool:
        return node.index == 0 and not self.joins

    @staticmethod
    def path(run: RunDir, job: str = "main") -> Path:
        return run.plan if job == "main" else run.jobs_dir / job / "plan.json"

    def save(self, run: RunDir) -> None:
        write_json_atomic(self.path(run, self.job_tag), asdict(self))

    @classmethod
    def load(cls, run: RunDir, job: str = "main") -> ClusterPlan:
        path = cls.path(run, job)
        data = read_json(path)
        if data is None:
            raise FileNotFoundError(f"{path} missing: was `hpcray up` run in this run dir?")
        data["nodes"] = [NodePlan(**n) for n in data["nodes"]]
        return cls(**data)
