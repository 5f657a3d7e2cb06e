"""Whether a path is on a filesystem every node of a job sees.

The run directory (plan, token, node logs) and the job's Python must be: a path under the
site's node-local directories (/tmp on all five machines) or on a memory filesystem exists
on the submitting host only, or as a different, empty directory on each node."""

from __future__ import annotations

import os
from pathlib import Path

from hpcray.sites.profile import SiteProfile

MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def is_under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (no partial names: /tmpx is not under /tmp)."""
    root = root.rstrip("/") or "/"
    path = path.rstrip("/") or "/"
    return path == root or path.startswith(root.rstrip("/") + "/")


def mount_type(path: str, mounts: str = "/proc/self/mounts") -> str | None:
    """Filesystem type of the longest mount point that holds `path`."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if is_under(path, point) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def node_local_reason(path: str, site: SiteProfile,
                      mounts: str = "/proc/self/mounts") -> str | None:
    """Why `path` is node-local on `site` ('under /tmp', 'on a tmpfs filesystem'), or None.
    A site without node-local paths (the test Slurm's emulated nodes share one host) has
    none. The directory is resolved (a venv's python links out of the venv)."""
    if not site.node_local_paths:
        return None
    expanded = os.path.expandvars(path)
    absolute = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(expanded))),
                            os.path.basename(expanded))
    for prefix in site.node_local_paths:
        expanded = os.path.expandvars(prefix)
        for root in {os.path.abspath(expanded), os.path.realpath(expanded)}:
            if is_under(absolute, root):
                return f"under {prefix}, which is node-local on site '{site.name}'"
    kind = mount_type(absolute, mounts)
    if kind in MEMORY_FILESYSTEMS:
        return f"on a {kind} filesystem, which is node-local"
    return None
