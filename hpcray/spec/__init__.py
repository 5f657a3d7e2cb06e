"""Workflow file -> typed model."""

from hpcray.spec.loader import load_workflow, loads_workflow
from hpcray.spec.models import AllocationSpec, DriverSpec, RaySpec, Workflow

__all__ = ["AllocationSpec", "DriverSpec", "RaySpec", "Workflow", "load_workflow",
           "loads_workflow"]
