"""Every task attempt, as one JSON line in <run>/stages/<stage>/attempts.jsonl."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Attempt:
    stage: str
    index: int
    attempt: int
    item: str                       # repr of the item, cut to 200 characters
    state: str                      # done | failed | timeout | lost
    submitted: float
    started: float | None = None    # on the worker's clock
    ended: float | None = None
    finished: float | None = None   # when the runner saw it
    node: str | None = None
    hosts: list[str] | None = None  # every node of a launched (MPI) task
    pid: int | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    error: str | None = None
    detail: str | None = None       # traceback or the tail of stderr
    command: list[str] | None = None
    stdout: str | None = None
    stderr: str | None = None


class AttemptLog:
    """One open file per stage, a line flushed per attempt (the runner writes thousands)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._dirs: dict[str, Path] = {}
        self._files: dict[str, Any] = {}

    def dir(self, stage: str) -> Path:
        path = self._dirs.get(stage)
        if path is None:
            path = self._dirs[stage] = self.root / stage
            path.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, attempt: Attempt) -> None:
        # vars(), not asdict(): the fields are plain values already, and asdict's deep copy
        # was most of the runner's own time per task
        line = json.dumps(vars(attempt), default=str)
        with self._lock:
            f = self._files.get(attempt.stage)
            if f is None:
                f = self._files[attempt.stage] = open(  # noqa: SIM115 - closed in close()
                    self.dir(attempt.stage) / "attempts.jsonl", "a")
            f.write(line + "\n")
            f.flush()

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


def read_attempts(run_path: Path, stage: str | None = None) -> list[dict[str, Any]]:
    root = run_path / "stages"
    files = [root / stage / "attempts.jsonl"] if stage else sorted(root.glob("*/attempts.jsonl"))
    out: list[dict[str, Any]] = []
    for path in files:
        if path.exists():
            out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out
