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


class Launcher(ABC):
    """Turns 'run argv once on each of these hosts' into the site's command line."""

    name: ClassVar[str]
    #: The launched process can tell which node it is on from its environment.
    node_name_env: ClassVar[str | None] = None

    @abstractmethod
    def command(self, req: LaunchRequest) -> list[str]: ...

    def per_process_env(self, req: LaunchRequest) -> list[dict[str, str]] | None:
        """Local launchers start one process per node themselves; others return None."""
        return None
