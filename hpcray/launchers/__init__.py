"""Launchers: how one process per node is started inside an allocation."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest
from hpcray.launchers.flux import FluxRun
from hpcray.launchers.local import LocalLauncher
from hpcray.launchers.lsf import Blaunch, Jsrun
from hpcray.launchers.mpiexec import Mpiexec
from hpcray.launchers.srun import Srun

LAUNCHERS: dict[str, type[Launcher]] = {
    "srun": Srun, "mpiexec": Mpiexec, "blaunch": Blaunch, "jsrun": Jsrun, "flux": FluxRun,
    "local": LocalLauncher}


def get_launcher(name: str) -> Launcher:
    return LAUNCHERS[name]()


__all__ = ["LAUNCHERS", "LaunchRequest", "Launcher", "get_launcher"]
