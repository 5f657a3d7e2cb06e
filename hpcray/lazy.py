"""Names of a package imported on first use (PEP 562): every Serve replica and task of a run
imports hpcray, and most of them need little of it."""

from __future__ import annotations

import importlib
from typing import Any


def attribute(package: str, where: dict[str, str], name: str) -> Any:
    """`name` of `package`: a public name from the module `where` says, else a submodule."""
    if name in where:
        return getattr(importlib.import_module(where[name]), name)
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{package}.{name}":
            raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
