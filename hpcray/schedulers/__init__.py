"""Batch schedulers, one module each: what to ask for and how to read what was given."""

from __future__ import annotations

from hpcray.schedulers.base import (
    AllocationInfo,
    JobRequest,
    JobState,
    NodeResources,
    Scheduler,
)
from hpcray.schedulers.flux import Flux
from hpcray.schedulers.local import Local
from hpcray.schedulers.lsf import Lsf
from hpcray.schedulers.pbs import Pbs
from hpcray.schedulers.slurm import Slurm

SCHEDULERS: dict[str, type[Scheduler]] = {
    "slurm": Slurm, "pbs": Pbs, "lsf": Lsf, "flux": Flux, "local": Local}


def get_scheduler(name: str) -> Scheduler:
    return SCHEDULERS[name]()


__all__ = ["SCHEDULERS", "AllocationInfo", "JobRequest", "JobState", "NodeResources",
           "Scheduler", "get_scheduler"]
