"""Job-scoped teardown: only this job's Ray processes, TERM then KILL. Never a bare `ray stop`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
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


def teardown(scope: str, roots: Iterable[int] = (), grace: float = 10.0) -> list[int]:
    """Stop the roots (``ray start``, which stops its own children), then sweep whatever of
    this job is left on this host, repeating while workers are still spawning."""
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
        killed.extend(terminate(root_procs, grace))
        roots = [p.pid for p in snapshot if p.is_running()]
        grace = min(grace, 3.0)
    for _ in range(5):
        procs = [p for p in job_processes(scope, roots) if p.is_running()]
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
