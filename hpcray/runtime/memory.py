"""The memory this job may use on a node: its cgroup's limit, not the node's RAM.

On shared nodes (Delta) a job gets what it asked for (--mem) or a fixed amount per CPU;
Ray's object store sized from the node's memory would push the job past its limit and the
scheduler kills it for memory."""

from __future__ import annotations

from pathlib import Path

import psutil

UNLIMITED = 2**60
# Ray's object store takes this share of the job's memory (Ray's own default share); the
# rest is Ray's `memory` resource, where replicas and tasks reserve theirs
OBJECT_STORE_SHARE = 0.3  # cgroup v1 writes 9223372036854771712 for "no limit"


def cgroup_limit(proc_cgroup: str = "/proc/self/cgroup",
                 root: str = "/sys/fs/cgroup") -> int | None:
    """The smallest memory limit on this process's cgroup path (v2 memory.max, or v1
    memory.limit_in_bytes), checking every ancestor: a job's limit may sit on its parent."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            base, name = Path(root), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]  # (a cgroup namespace's ..)
        for depth in range(len(parts), -1, -1):
            try:
                text = (base.joinpath(*parts[:depth]) / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < UNLIMITED:
                limits.append(int(text))
    return min(limits) if limits else None


def job_memory(scheduler_limit: int | None, cgroup: int | None = None,
               available: int | None = None) -> int:
    """Bytes this job may still use on the node: the least of what the scheduler says the
    job holds, its cgroup's limit and the node's available memory."""
    if available is None:
        available = psutil.virtual_memory().available
    return min(x for x in (scheduler_limit, cgroup, available) if x is not None)
