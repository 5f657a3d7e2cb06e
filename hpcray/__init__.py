"""hpcray: hybrid HPC + ML workflows on Ray inside batch allocations.

The public API: submitting and following runs (`submit`, `status`, `logs`, `report`, ...),
joining one (`connect`), calling its services (`service`), starting one from a driver
(`serving`), and what a process knows of its run (`context`, `progress`).

Each name is imported when first used: every Serve replica and task of a run imports this
package, and most of them need none of the submitting side (about 0.6 s of imports each)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcray import lazy

if TYPE_CHECKING:
    from hpcray.api import cancel, grow, logs, script, shrink, status, submit, wait
    from hpcray.bootstrap.connect import connect
    from hpcray.runcontext import RunContext, context, progress
    from hpcray.services.handle import service
    from hpcray.services.serving import serving
    from hpcray.spec import Workflow, load_workflow
    from hpcray.views.report import report

_WHERE = {
    "cancel": "hpcray.api", "logs": "hpcray.api", "script": "hpcray.api",
    "status": "hpcray.api", "submit": "hpcray.api", "wait": "hpcray.api",
    "grow": "hpcray.api", "shrink": "hpcray.api",
    "connect": "hpcray.bootstrap.connect",
    "RunContext": "hpcray.runcontext", "context": "hpcray.runcontext",
    "progress": "hpcray.runcontext",
    "service": "hpcray.services.handle", "serving": "hpcray.services.serving",
    "Workflow": "hpcray.spec", "load_workflow": "hpcray.spec",
    "report": "hpcray.views.report",
}

__all__ = ["RunContext", "Workflow", "cancel", "connect", "context", "grow", "load_workflow",
           "logs", "progress", "report", "script", "service", "serving", "shrink", "status",
           "submit", "wait"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """A public name, or a subpackage (`hpcray.services.scale(...)` after `import hpcray`)."""
    value = lazy.attribute(__name__, _WHERE, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
