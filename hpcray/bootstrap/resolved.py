"""What submit resolved for the run (resolved.json), and the tail of a log for error texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcray.errors import BootstrapError
from hpcray.rundir import RunDir, read_json
from hpcray.sites import SiteProfile
from hpcray.spec import Workflow

LOG_TAIL_LINES = 15


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a node's log, or why there are none, for an error the user reads."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written: the node's agent never started)"
    return "\n".join(text[-lines:]) or "(log is empty)"


def load_resolved(run: RunDir) -> tuple[Workflow, SiteProfile, dict[str, Any]]:
    """The workflow, site and job request exactly as submit checked them."""
    data = read_json(run.resolved)
    if data is None:
        raise BootstrapError(f"{run.resolved} missing: this directory was not made by submit")
    return (Workflow.model_validate(data["workflow"]), SiteProfile.model_validate(data["site"]),
            data["request"])
