"""hpcray: hybrid HPC + ML workflows on Ray inside batch allocations.

The public API: submitting and following runs (`submit`, `status`, ...), joining one
(`connect`), calling its services (`service`), starting one from a driver (`serving`), and
what a process knows of its run (`context`, `progress`)."""

from hpcray.api import cancel, logs, script, status, submit, wait
from hpcray.bootstrap.connect import connect
from hpcray.runcontext import RunContext, context, progress
from hpcray.services.handle import service
from hpcray.services.serving import serving
from hpcray.spec import Workflow, load_workflow

__all__ = ["RunContext", "Workflow", "cancel", "connect", "context", "load_workflow", "logs",
           "progress", "script", "service", "serving", "status", "submit", "wait"]
__version__ = "0.1.0"
