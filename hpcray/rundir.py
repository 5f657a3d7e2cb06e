"""One directory per run: what was submitted, what happened, and the logs of every node."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcray import env
from hpcray.errors import RunNotFound
from hpcray.state import RunRecord

DEFAULT_RUN_ROOT = "hpcray-runs"


RESERVE_BYTES = 256 * 1024  # freed when the disk fills, so the run can still record its end


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Whole or not at all: a full disk leaves the previous file, not half a new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


@dataclass(frozen=True)
class RunDir:
    path: Path

    # files
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def job_script(self) -> Path:
        return self.path / "job.sh"

    @property
    def job_out(self) -> Path:
        return self.path / "job.out"

    @property
    def resolved(self) -> Path:
        return self.path / "resolved.json"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def head(self) -> Path:
        return self.path / "head.json"

    @property
    def token(self) -> Path:
        return self.path / "secrets" / "ray-token"

    @property
    def stop_file(self) -> Path:
        """Written by `hpcray up` to ask every node agent to tear down (shared filesystem)."""
        return self.path / "stop"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def nodes(self) -> Path:
        return self.path / "nodes"

    def node_log(self, node: str) -> Path:
        return self.logs / f"node-{node}.log"

    def node_state_file(self, node: str) -> Path:
        return self.nodes / f"{node}.json"

    def create(self) -> RunDir:
        """The run's directory, private to its user (0700): logs and results can hold what
        the user's code printed."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        for d in (self.logs, self.nodes):
            d.mkdir(parents=True, exist_ok=True)
        (self.path / ".reserve").write_bytes(b"\0" * RESERVE_BYTES)
        (self.path / "secrets").mkdir(mode=0o700, exist_ok=True)
        return self

    # run.json: read-modify-write under a lock, since submit, up and cancel all touch it.
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".run.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        return read_json(self.run_json, {})

    def record(self) -> RunRecord:
        """run.json, typed (a missing file reads as a run just submitted)."""
        return RunRecord.model_validate(self.read())

    def free_reserve(self) -> bool:
        """Give back the space kept at creation (True if there was some to give)."""
        try:
            (self.path / ".reserve").unlink()
            return True
        except FileNotFoundError:
            return False

    def write_with_reserve(self, write) -> Any:
        """`write()`; if the disk is full, once more after freeing the reserve."""
        import errno

        try:
            return write()
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not self.free_reserve():
                raise
            return write()

    def update(self, **fields: Any) -> dict[str, Any]:
        return self.write_with_reserve(lambda: self._update(fields))

    def _update(self, fields: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            data = self.read()
            for key, value in fields.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                else:
                    data[key] = value
            write_json_atomic(self.run_json, data)
            return data

    def mark(self, event: str, when: float | None = None, **fields: Any) -> dict[str, Any]:
        """Record the time of a lifecycle event (first occurrence wins)."""
        return self.write_with_reserve(lambda: self._mark(event, when, fields))

    def mark_timing(self, event: str, when: float) -> None:
        """A timing only, from a process of the run that must not use the disk reserve kept
        for recording the run's end (OSError when the disk is full)."""
        self._mark(event, when, {})

    def _mark(self, event: str, when: float | None, fields: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            data = self.read()
            times = data.setdefault("times", {})
            times.setdefault(event, time.time() if when is None else when)
            data.update(fields)
            write_json_atomic(self.run_json, data)
            return data

    @property
    def jobs_dir(self) -> Path:
        """jobs/<tag>/: a worker's or successor's job script, output and plan."""
        return self.path / "jobs"

    def update_job(self, tag: str, only_from: Collection[str] | None = None,
                   **fields: Any) -> bool:
        """Merge `fields` into run.json's `jobs.<tag>` (the other jobs and fields kept);
        with `only_from`, only while the job's state is one of those (checked under the
        lock: two processes move a job on, and its state never goes back). True if written."""
        def write() -> bool:
            with self._locked():
                data = self.read()
                job = data.setdefault("jobs", {}).setdefault(tag, {})
                if only_from is not None and job.get("state") not in only_from:
                    return False
                job.update(fields)
                write_json_atomic(self.run_json, data)
                return True
        return self.write_with_reserve(write)

    def update_node(self, name: str, fresh: bool = False, **fields: Any) -> None:
        """Merge `fields` into run.json's `nodes.<name>` (`fresh`: start the entry anew, a
        node a new job brought to a host an ended one had)."""
        def write() -> None:
            with self._locked():
                data = self.read()
                nodes = data.setdefault("nodes", {})
                nodes[name] = {**({} if fresh else nodes.get(name, {})), **fields}
                write_json_atomic(self.run_json, data)
        self.write_with_reserve(write)

    def add_lost(self, *names: str) -> None:
        """Add to run.json's `nodes_lost` (a union: two watchers add to it)."""
        def write() -> None:
            with self._locked():
                data = self.read()
                data["nodes_lost"] = sorted({*data.get("nodes_lost", []), *names})
                write_json_atomic(self.run_json, data)
        self.write_with_reserve(write)

    def replace(self, **fields: Any) -> dict[str, Any]:
        """Set run.json's `fields` whole (update merges dicts): a relay's successor starts
        `times`, `nodes` and `services` afresh for its own job."""
        def write() -> dict[str, Any]:
            with self._locked():
                data = {**self.read(), **fields}
                write_json_atomic(self.run_json, data)
                return data
        return self.write_with_reserve(write)

    def node_states(self) -> dict[str, dict[str, Any]]:
        out = {}
        if self.nodes.is_dir():
            for f in sorted(self.nodes.glob("*.json")):
                out[f.stem] = read_json(f, {})
        return out


def find_run(ref: str, run_root: str | Path | None = None) -> RunDir:
    """A run by its directory, run id, or scheduler job id."""
    candidate = Path(ref)
    if (candidate / "run.json").exists():
        return RunDir(candidate.resolve())
    root = Path(run_root or os.environ.get(env.RUN_ROOT) or DEFAULT_RUN_ROOT)
    if (root / ref / "run.json").exists():
        return RunDir((root / ref).resolve())
    if root.is_dir():
        for run_json in sorted(root.glob("*/run.json"), reverse=True):
            data = read_json(run_json, {})
            if str(data.get("job_id")) == ref or data.get("run_id") == ref:
                return RunDir(run_json.parent.resolve())
    raise RunNotFound(f"no run '{ref}' (looked for a run directory, and run/job ids under {root})")


def run_secrets(run_path: Path) -> list[str]:
    """The run's secrets (the Ray token, the HTTP token), so that what is written for people
    (the report, Ray's events kept for it) carries none, whatever text a label brings in."""
    found = []
    for path in sorted(Path(run_path, "secrets").glob("*")):
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) >= 8:
            found.append(text)
    return found


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text
