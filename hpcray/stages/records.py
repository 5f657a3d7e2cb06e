"""Every task attempt, as one JSON line in <run>/stages/<stage>/attempts.jsonl."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcray.state import AttemptState


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
    source: int | None = None       # a streaming stage's task: its producer task's index
    output: str | None = None       # a producer's output as JSON, when small (kept_output)


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


OUTPUT_LIMIT = 64 * 1024  # bytes of JSON kept of a producer's output per attempt


def item_text(item: Any) -> str:
    """An item as its records name it (and as a resumed run matches it)."""
    return repr(item)[:200]


def kept_output(value: Any) -> str | None:
    """A producer's output as JSON text, small enough to keep in its record, so that a
    relay's next job can feed it to the consumers again without running the task; None when
    it is not JSON (a Ray reference, an object), would not come back the same (a tuple, a
    dict with int keys) or is too large: then the consumers' records decide (the runner)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return None
    return text if len(text) <= OUTPUT_LIMIT and json.loads(text) == value else None


@dataclass
class EarlierTask:
    """One task as the run's earlier jobs left it in attempts.jsonl."""

    index: int
    item: str
    attempts: int = 0                     # attempts recorded (their numbers are taken)
    done: dict[str, Any] | None = None    # its done attempt, if one is
    source: int | None = None


class EarlierAttempts:
    """What the earlier jobs of a run recorded, per stage: a relay's successor skips every
    task found done here (by stage and index; a streaming stage's task by the producer task
    it came from) and numbers the attempts of the others after the recorded ones. A task a
    drain interrupted has no record (only finished attempts are written), so it runs again."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.tasks: dict[str, dict[int, EarlierTask]] = {}
        self.by_source: dict[str, dict[int, int]] = {}
        for rec in records:
            stage, index = rec.get("stage"), rec.get("index")
            if not isinstance(stage, str) or not isinstance(index, int):
                continue
            task = self.tasks.setdefault(stage, {}).setdefault(
                index, EarlierTask(index, rec.get("item") or "", source=rec.get("source")))
            task.attempts = max(task.attempts, int(rec.get("attempt") or 0) + 1)
            if rec.get("state") == AttemptState.DONE and task.done is None:
                task.done = rec
            if task.source is not None:
                self.by_source.setdefault(stage, {})[task.source] = index

    @classmethod
    def read(cls, run_path: Path) -> EarlierAttempts:
        """attempts.jsonl of every stage; a line cut short (a job killed while writing it)
        is no record: that task runs again."""
        records = []
        for path in sorted((run_path / "stages").glob("*/attempts.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return cls(records)

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def task(self, stage: str, index: int) -> EarlierTask | None:
        return self.tasks.get(stage, {}).get(index)

    def from_source(self, stage: str, source: int) -> EarlierTask | None:
        index = self.by_source.get(stage, {}).get(source)
        return None if index is None else self.task(stage, index)

    def used(self, stage: str) -> set[int]:
        """Indices of the stage's tasks recorded, done or not."""
        return set(self.tasks.get(stage, {}))


def read_attempts(run_path: Path, stage: str | None = None) -> list[dict[str, Any]]:
    root = run_path / "stages"
    files = [root / stage / "attempts.jsonl"] if stage else sorted(root.glob("*/attempts.jsonl"))
    out: list[dict[str, Any]] = []
    for path in files:
        if path.exists():
            out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out
