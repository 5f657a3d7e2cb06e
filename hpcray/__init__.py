"""hpcray: hybrid HPC + ML workflows on Ray inside batch allocations."""

from hpcray.api import cancel, logs, script, status, submit, wait
from hpcray.bootstrap.connect import connect
from hpcray.services.handle import service
from hpcray.spec import Workflow, load_workflow

__all__ = ["Workflow", "cancel", "connect", "load_workflow", "logs", "script", "status",
           "service", "submit", "wait"]
__version__ = "0.1.0"
