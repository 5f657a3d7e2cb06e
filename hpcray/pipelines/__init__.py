"""The paper's three pipelines, built on hpcray's services and stages."""

from __future__ import annotations

import importlib

from pydantic import BaseModel

# driver function -> the pydantic model of its `driver.args`, checked when the file is loaded
DRIVER_OPTIONS = {
    "hpcray.pipelines.cellpainting:run": "hpcray.pipelines.cellpainting.pipeline:"
                                         "CellPaintingConfig",
    "hpcray.pipelines.uq:run": "hpcray.pipelines.uq.pipeline:UQConfig",
    "hpcray.pipelines.signature:run": "hpcray.pipelines.signature.pipeline:SignatureConfig",
}


def driver_options(function: str) -> type[BaseModel] | None:
    target = DRIVER_OPTIONS.get(function)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
