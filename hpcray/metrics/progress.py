"""Progress a driver reports for its long work (trials, epochs, samples), shown by
`hpcray submit --wait` and `hpcray status` as progress bars: one small JSON file per task
under `<run>/progress/`, so any process of the run can report and any reader can show it."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from hpcray import env
from hpcray.rundir import read_json, write_json_atomic

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def report(task: str, done: float, total: float | None = None, detail: str = "",
           run_dir: str | Path | None = None) -> None:
    """Record that `task` is at `done` of `total`. Outside a run (no HPCRAY_RUN_DIR), nothing."""
    root = run_dir or os.environ.get(env.RUN_DIR)
    if not root:
        return
    folder = Path(root, "progress")
    folder.mkdir(exist_ok=True)
    path = folder / f"{_SAFE.sub('_', task)}.json"
    now = time.time()
    started = (read_json(path, None) or {}).get("started", now)
    write_json_atomic(path, {"task": task, "done": done, "total": total, "detail": detail,
                             "time": now, "started": started})


def read(run_path: Path) -> list[dict[str, Any]]:
    """Every task's latest report, in the order they started."""
    found = [read_json(p, None) for p in Path(run_path, "progress").glob("*.json")]
    entries = [e for e in found if e]
    return sorted(entries, key=lambda e: (e["started"], e["task"]))
