"""`module:attr` names in a workflow file (drivers, stage functions and classes), imported
where they run: from the working directory (the workflow's, which the job puts on
PYTHONPATH for every process), then the installed packages."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def load_target(target: str) -> Any:
    """The object `module:attr.sub` names."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
