"""What a driver, a stage or a pipeline may know about the run it is part of, through the
public API rather than the runtime's internals: `hpcray.context()`."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from hpcray import env
from hpcray.bootstrap.resolved import load_resolved
from hpcray.metrics import progress as _progress
from hpcray.rundir import RunDir
from hpcray.sites.profile import SiteProfile
from hpcray.spec.models import Workflow

log = logging.getLogger(__name__)


class RunContext:
    """The run this process belongs to. `run_dir` and `node` come from the environment every
    process of a run inherits; the workflow and site are read from the run directory on first
    use (a stage task that only wants `run_dir` never parses them). Outside a run, or in a run
    directory not made by submit, they are None.

    `node` is the run's node of a process Ray started (a replica, a task); the driver and
    `hpcray up` are not Ray's, so theirs is None.

    `resumed` is True in a relay's successor job (allocation.relay): the run went on past an
    earlier job's walltime, so a driver or task may find its own earlier results (a Tune
    search to restore, files already written) and should continue from them."""

    def __init__(self, run_dir: Path | None, node: str | None, jobs_before: int = 0) -> None:
        self.run_dir, self.node = run_dir, node
        self.jobs_before = jobs_before  # jobs of the relay that ran the run before this one

    @property
    def resumed(self) -> bool:
        """This process belongs to a relay's successor job, not to the run's first job."""
        return self.jobs_before > 0

    @functools.cached_property
    def _resolved(self) -> tuple[Workflow, SiteProfile] | None:
        if self.run_dir is None:
            return None
        try:
            workflow, site, _ = load_resolved(RunDir(self.run_dir))
        except Exception as exc:  # noqa: BLE001 - not submitted by hpcray, or unreadable
            log.debug("no resolved workflow in %s: %s", self.run_dir, exc)
            return None
        return workflow, site

    @property
    def workflow(self) -> Workflow | None:
        """The workflow as submitted (resolved)."""
        return self._resolved[0] if self._resolved else None

    @property
    def site(self) -> SiteProfile | None:
        """The site profile it was submitted for."""
        return self._resolved[1] if self._resolved else None

    @property
    def services(self) -> list[str]:
        """The workflow's services."""
        return [s.name for s in self.workflow.services] if self.workflow else []

    def progress(self, task: str, done: float, total: float | None = None,
                 detail: str = "") -> None:
        """Report `task` at `done` of `total` (progress bars of `hpcray status`)."""
        _progress.report(task, done, total, detail, run_dir=self.run_dir)


def context() -> RunContext:
    """The run of this process (a driver, a replica, a stage task, a job step)."""
    return RunContext(env.run_dir(), env.current_node(), env.resumed_after())


def progress(task: str, done: float, total: float | None = None, detail: str = "") -> None:
    """Report `task` at `done` of `total` for this run (nothing outside a run)."""
    _progress.report(task, done, total, detail)
