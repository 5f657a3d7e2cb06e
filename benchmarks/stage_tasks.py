"""Task bodies and the plain-Ray baseline for benchmarks/stages.py (imported in the run)."""

from __future__ import annotations

import subprocess
import time


def empty(item=None):
    return None


def plain_ray(n_functions: int, n_executables: int, cpus: float) -> dict:
    """The same tasks as the stages, as plain Ray tasks submitted at once, in the same
    cluster right after the stages (its workers are as warm as theirs were)."""
    import ray

    @ray.remote(num_cpus=cpus)
    def fn(item):
        return None

    @ray.remote(num_cpus=cpus)
    def exe(item):
        return subprocess.run(["/bin/true"], check=True).returncode

    ray.get([fn.remote(i) for i in range(64)])  # warm-up, as the stages' warm-up stage
    out = {}
    for name, task, n in (("functions", fn, n_functions), ("executables", exe, n_executables)):
        start = time.perf_counter()
        ray.get([task.remote(i) for i in range(n)])
        out[name] = time.perf_counter() - start
    return out
