"""The end-to-end test's driver (`two_annotators:run_both`, imported from this directory):
the signature pipeline twice in one run, through two annotation services, each pass with
its own arguments and output directory."""

from __future__ import annotations

from typing import Any


def run_both(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    from hpcray.pipelines.signature import run

    return {"first": run(**first), "second": run(**second)}
