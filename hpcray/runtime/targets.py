"""`module:attr` names in a workflow file (drivers, stage functions and classes), imported
where they run: from the working directory (the workflow's, which the job puts on
PYTHONPATH for every process), then the installed packages."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any


def import_module(module_name: str) -> ModuleType:
    """The module, found from the working directory first (the workflow's, in the job)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(module_name)


def load_target(target: str) -> Any:
    """The object `module:attr.sub` names."""
    module_name, _, attr = target.partition(":")
    obj: Any = import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
