"""A short per-job temp dir: Ray's UNIX socket paths must fit in 107 bytes."""

from __future__ import annotations

import os
import re

from hpcray.errors import BootstrapError

SOCKET_PATH_LIMIT = 107
# Longest socket path Ray creates under --temp-dir (session name has a date, microseconds, pid).
_RAY_SOCKET_SUFFIX = "/session_2026-11-26_17-02-43_123456_4194304/sockets/plasma_store"


def short_id(job_id: str) -> str:
    """Job ids such as '1234.polaris-pbs-01.hsn...' or 'ƒABC' reduced to safe short text."""
    head = job_id.split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9]", "", head)
    return cleaned[-12:] or "job"


def temp_dir_for(temp_root: str, job_id: str, node_index: int) -> str:
    """`temp_root` may name variables the node has ($USER in Frontier's /mnt/bb/$USER)."""
    root = os.path.expandvars(temp_root).rstrip("/")
    path = f"{root}/hr{short_id(job_id)}n{node_index}"
    check_socket_length(path)
    return path


def check_socket_length(temp_dir: str) -> None:
    longest = len((temp_dir + _RAY_SOCKET_SUFFIX).encode())
    if longest > SOCKET_PATH_LIMIT:
        raise BootstrapError(
            f"temp dir {temp_dir!r} is too long: Ray's socket paths under it would be {longest} "
            f"bytes (limit {SOCKET_PATH_LIMIT}); set ray.temp_root to a shorter directory")
