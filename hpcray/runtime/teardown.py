"""Job-scoped teardown: only this job's Ray processes, TERM then KILL. Never a bare `ray stop`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable

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
