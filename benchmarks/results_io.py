"""What every benchmark does with its results: a CSV of its rows, the printed table as text,
and a PNG drawn with matplotlib's file-only backend, all under benchmarks/results/."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcray.metrics.plotting import pyplot  # noqa: F401 - the benchmarks' import

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, rows: list[dict[str, Any]], console, draw: Callable[[Path], None]) -> None:
    """<name>.csv (the rows), <name>.png (`draw(path)`), <name>.txt (what `console` printed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row))  # rows may differ
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    draw(RESULTS / f"{name}.png")
    (RESULTS / f"{name}.txt").write_text(console.export_text())
    console.print(f"wrote {RESULTS}/{name}.{{csv,png,txt}}")
