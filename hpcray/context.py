"""What a driver, a stage or a pipeline may know about the run it is part of, through the
public API rather than the runtime's internals: `hpcray.context()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcray import env
from hpcray.bootstrap.resolved import load_resolved
from hpcray.errors import HpcrayError
from hpcray.metrics import progress as _progress
from hpcray.rundir import RunDir
from hpcray.sites.profile import SiteProfile
from hpcray.spec.models import Workflow


@dataclass(frozen=True)
class RunContext:
    """The run this process belongs to; every field is None (or empty) outside a run."""

    run_dir: Path | None
    node: str | None                       # the run's node this process is on
    workflow: Workflow | None = None       # as submitted (resolved)
    site: SiteProfile | None = None        # the site profile it was submitted for
    services: list[str] = field(default_factory=list)  # the workflow's services

    def progress(self, task: str, done: float, total: float | None = None,
                 detail: str = "") -> None:
        """Report `task` at `done` of `total` (progress bars of `hpcray status`)."""
        _progress.report(task, done, total, detail, run_dir=self.run_dir)


def context() -> RunContext:
    """The run of this process (a driver, a replica, a stage task, a job step): found from the
    environment every process of a run inherits."""
    run_dir, node = env.run_dir(), env.current_node()
    if run_dir is None:
        return RunContext(None, node)
    try:
        workflow, site, _ = load_resolved(RunDir(run_dir))
    except (HpcrayError, OSError):  # a run dir not made by submit (a test's, a bare connect)
        return RunContext(run_dir, node)
    return RunContext(run_dir, node, workflow, site, [s.name for s in workflow.services])


def progress(task: str, done: float, total: float | None = None, detail: str = "") -> None:
    """Report `task` at `done` of `total` for this run (nothing outside a run)."""
    _progress.report(task, done, total, detail)
