"""Task bodies and the interleaved measurement for benchmarks/stages.py, run as the driver of
a workflow: hpcray's StageRunner (the code `hpcray up` runs for `stages:`) and plain Ray tasks,
alternating in the same cluster, so both see the same warm workers and the same noise."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path


def empty(item=None):
    return None


def interleaved(n_functions: int, n_executables: int, cpus: float, rounds: int) -> dict:
    """Per kind: the wall time of each round, stage runner and plain Ray, alternating which
    goes first. Both submit every task at once and wait for the last."""
    import ray

    from hpcray.rundir import RunDir
    from hpcray.spec.stages import StageSpec
    from hpcray.stages.runner import StageRunner

    @ray.remote(num_cpus=cpus)
    def fn(item):
        return None

    @ray.remote(num_cpus=cpus)
    def exe(item):
        return subprocess.run(["/bin/true"], check=True).returncode

    run = RunDir(Path(os.environ["HPCRAY_RUN_DIR"]))
    base = Path.cwd()

    def stage(kind: str, n: int, r: int) -> float:
        what = {"function": "stage_tasks:empty"} if kind == "functions" else \
            {"command": ["/bin/true"]}
        spec = StageSpec(name=f"{kind}-{r}", each={"items": list(range(n))},
                         resources={"cpus": cpus}, max_in_flight=n, **what)
        start = time.perf_counter()
        StageRunner([spec], run, base).run()
        return time.perf_counter() - start

    def plain(kind: str, n: int, r: int) -> float:
        task = fn if kind == "functions" else exe
        start = time.perf_counter()
        ray.get([task.remote(i) for i in range(n)])
        return time.perf_counter() - start

    for kind in ("functions", "executables"):  # warm-up: workers started, code imported
        stage(kind, 64, -1)
        plain(kind, 64, -1)
    out: dict = {}
    for kind, n in (("functions", n_functions), ("executables", n_executables)):
        stage_s, plain_s = [], []
        for r in range(rounds):
            order = ((stage, stage_s), (plain, plain_s))
            for measure, into in order if r % 2 == 0 else order[::-1]:
                into.append(measure(kind, n, r))
        out[kind] = {"stage_s": stage_s, "plain_s": plain_s,
                     "ratio_median": statistics.median(a / b for a, b in
                                                       zip(stage_s, plain_s, strict=True))}
    return out
