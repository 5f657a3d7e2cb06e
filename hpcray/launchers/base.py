"""A launcher starts one process per node inside an allocation (Parsl's launcher idea)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class LaunchRequest:
    hosts: tuple[str, ...]
    argv: tuple[str, ...]
    gpus_per_node: int = 0
    cpus_per_node: int = 0
    per_node: int = 1  # processes (MPI ranks) on each host

    @property
    def ntasks(self) -> int:
        return len(self.hosts) * self.per_node


class Launcher(ABC):
    """Turns 'run argv `per_node` times on each of these hosts' into the site's command
    line."""

    name: ClassVar[str]
    #: The launched process can tell which node it is on from its environment.
    node_name_env: ClassVar[str | None] = None

    @abstractmethod
    def command(self, req: LaunchRequest) -> list[str]: ...

    def per_process_env(self, req: LaunchRequest) -> list[dict[str, str]] | None:
        """Local launchers start each process themselves (one env per process, with its
        node name and rank); others return None."""
        return None
