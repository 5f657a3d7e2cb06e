"""Job-scoped teardown: only this job's Ray processes, TERM then KILL. Never a bare `ray stop`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from hpcray import env

log = logging.getLogger(__name__)

#: Set in the environment of `ray start` only, as ``<cluster id>/<node name>``; every Ray
#: process of the node inherits it (raylet, GCS, workers, whatever user tasks spawn), even
#: after it is re-parented. Several emulated nodes of one job may share a host, so a node
#: agent matches its own node only, while the job's final sweep matches the cluster prefix.
MARKER = env.RAY_MARKER


def marker_value(cluster_id: str, node: str) -> str:
    return f"{cluster_id}/{node}"


def _matches(value: str | None, scope: str) -> bool:
    return value is not None and (value == scope or value.startswith(scope + "/"))


def marked_processes(scope: str) -> list[psutil.Process]:
    """Processes whose marker is ``scope`` (one node) or below it (``cluster id``: all nodes)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "uids"]):
        if proc.pid == me:
            continue
        try:
            if _matches(proc.environ().get(MARKER), scope):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
    return found


def _tree(roots: Iterable[int]) -> list[psutil.Process]:
    out = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            out.append(root)
            out.extend(root.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return out


def job_processes(scope: str, roots: Iterable[int] = ()) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for proc in _tree(roots) + marked_processes(scope):
        if proc.pid != os.getpid():
            seen[proc.pid] = proc
    return list(seen.values())


def terminate(procs: list[psutil.Process], grace: float) -> list[int]:
    """TERM all, wait up to ``grace`` seconds, KILL the rest. Returns the pids signalled."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            log.info("pid %d ignored TERM for %.0fs: KILL", proc.pid, grace)
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


RAY_CORE = ("raylet", "gcs_server")  # what `ray start` stops first, and the ones that matter


def _ended(proc: psutil.Process) -> bool:
    """Gone, or a zombie: it exited and waits only for its parent to reap it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_ended(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _ended(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not _ended(p)]
    return alive


def _stop_ray_start(root: psutil.Process, grace: float) -> list[int]:
    """TERM `ray start`, which stops the raylet and then the GCS (well within a second);
    once both are gone, KILL it and its other daemons (the monitor, log monitor, client
    server: they keep no state, and `ray start` would give each a second of its own,
    one after another)."""
    try:
        daemons = root.children()
        names = {d.pid: d.name() for d in daemons}
    except psutil.NoSuchProcess:
        return []
    core = [d for d in daemons if names[d.pid] in RAY_CORE]
    with contextlib.suppress(psutil.NoSuchProcess):
        root.terminate()
    _wait_ended(core, grace)
    rest = [root, *(d for d in daemons if names[d.pid] not in RAY_CORE)]
    for proc in rest + core:
        with contextlib.suppress(psutil.NoSuchProcess):
            if not _ended(proc):
                proc.kill()
    psutil.wait_procs([root], timeout=5)  # reaps it when it is our child
    _wait_ended(rest + core, 5)
    return [p.pid for p in [root, *daemons]]


def teardown(scope: str, roots: Iterable[int] = (), grace: float = 10.0) -> list[int]:
    """Stop the roots (``ray start`` and its daemons, `_stop_ray_start`), then sweep whatever
    of this job is left on this host (tasks' own processes get TERM and `grace`),
    repeating while workers are still spawning."""
    killed: list[int] = []
    roots = list(roots)
    root_procs = []
    for pid in roots:
        try:
            root_procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    if root_procs:
        snapshot = job_processes(scope, roots)  # before children are re-parented
        for root in root_procs:
            killed.extend(_stop_ray_start(root, grace))
        roots = [p.pid for p in snapshot if not _ended(p)]
        grace = min(grace, 3.0)
    for _ in range(5):
        procs = [p for p in job_processes(scope, roots) if not _ended(p)]
        if not procs:
            break
        killed.extend(terminate(procs, grace))
        roots = []
    return killed


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """TERM a process started with start_new_session=True and all it started; KILL after
    `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- Ray's session logs, kept in the run directory ------------------------------------------------

#: What one node keeps of Ray's session logs: the newest files first, up to this many bytes
RAY_LOGS_LIMIT = 50 * 2**20
RAY_LOGS = "ray"  # <run>/logs/ray/<node>/: that node's Ray session logs, in Ray's own layout
LEFT_OUT = "left-out.txt"
REDACTED = b"<redacted>"


def ray_logs_dir(run_logs: Path, node: str) -> Path:
    """Where a node's Ray session logs are kept (`run_logs` is <run>/logs)."""
    return run_logs / RAY_LOGS / node


def _session_logs(temp_dir: Path, since: float | None) -> list[tuple[Path, Path]]:
    """(file, its path in the copy) of every regular file under the logs/ of the temp dir's
    sessions written since `since` (this job's: a temp dir a failed job kept, with the same
    job id, holds that job's too); one normally, more are told apart by their names."""
    sessions = []
    for session in sorted(temp_dir.glob("session_*")):
        with contextlib.suppress(OSError):
            if not session.is_symlink() and (since is None or
                                             (session / "logs").stat().st_mtime >= since):
                sessions.append(session)
    out = []
    for session in sessions:
        logs = session / "logs"
        for path in logs.rglob("*"):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(logs)
                out.append((path, session.name / rel if len(sessions) > 1 else rel))
    return out


def _secrets(secrets_dir: Path | None) -> list[bytes]:
    if secrets_dir is None or not secrets_dir.is_dir():
        return []
    found = []
    for path in secrets_dir.iterdir():
        with contextlib.suppress(OSError):
            value = path.read_bytes().strip()
            if len(value) >= 8:
                found.append(value)
    return found


def keep_ray_logs(temp_dir: str | Path, dest: Path, limit: int = RAY_LOGS_LIMIT,
                  secrets_dir: Path | None = None, since: float | None = None) -> int:
    """Copy a node's Ray session logs into the run directory before its temp dir goes, so a
    run's Ray, Serve and worker logs outlive it (the sessions written since `since`, when
    this node's `ray start` began): newest files first, at most `limit` bytes;
    a file that does not fit whole keeps its end (from a line's start), and what is cut or
    left out is listed in `left-out.txt`. Every secret of the run (the files of
    `secrets_dir`: the Ray token, the HTTP token) is replaced by `<redacted>`, should Ray
    ever log one. Returns the bytes written."""
    files = []
    for path, rel in _session_logs(Path(temp_dir), since):
        with contextlib.suppress(OSError):
            st = path.stat()
            files.append((st.st_mtime, st.st_size, path, rel))
    if not files:
        return 0
    secrets = _secrets(secrets_dir)
    files.sort(key=lambda f: f[0], reverse=True)
    left, written, notes = limit, 0, []
    for _, size, path, rel in files:
        if left <= 0:
            notes.append(f"{rel}: {size} bytes, left out (over {limit} bytes kept per node)")
            continue
        try:
            with path.open("rb") as f:
                if size > left:
                    f.seek(size - left)
                data = f.read(left)
        except OSError as exc:
            notes.append(f"{rel}: not read ({exc})")
            continue
        if size > left:  # whole lines only: no secret cut in two
            start = data.find(b"\n")
            data = data[start + 1:] if start >= 0 else b""
            if not data:
                notes.append(f"{rel}: {size} bytes, left out (over {limit} bytes kept per "
                              "node)")
                continue
            notes.append(f"{rel}: {size} bytes, its last {len(data)} kept")
        for secret in secrets:
            data = data.replace(secret, REDACTED)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written += len(data)
        left -= len(data)
    if notes:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / LEFT_OUT).write_text("\n".join(notes) + "\n")
    log.info("kept %d of Ray's session log files (%.1f MB) in %s",
             len(files) - sum("left out" in n or "not read" in n for n in notes),
             written / 2**20, dest)
    return written
