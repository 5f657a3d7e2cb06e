"""Run a UQ task plan with stand-in tasks that only hold their GPU share for a time in
proportion to their cost: the packing is checked (and its makespan and GPU-memory use
measured) on a real Ray scheduler, without training anything. Used by the tests on a
simulated 4-node x 4-GPU inventory and by benchmarks/uq.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hpcray.pipelines.uq.packing import Inventory, UQTask, ray_options


def _hold(seconds: float) -> dict[str, Any]:
    import ray

    start = time.time()
    time.sleep(seconds)
    return {"node": ray.get_runtime_context().get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()], "start": start, "end": time.time()}


def run_plan(tasks: list[UQTask], inventory: Inventory, *, seconds_per_cost: float = 0.5,
             whole_gpus: bool = False) -> list[dict[str, Any]]:
    """Each task holds its GPU share (or a whole GPU with `whole_gpus`: one task per GPU)
    for cost x seconds_per_cost; returns where and when each ran."""
    import ray

    hold = ray.remote(_hold)
    refs = {}
    for task in tasks:
        options = {"num_cpus": 0, "num_gpus": 1} if whole_gpus else ray_options(task, inventory)
        refs[hold.options(**options).remote(task.cost * seconds_per_cost)] = task
    out = []
    for ref, task in refs.items():
        record = ray.get(ref)
        record.update(key=task.key, memory_gb=task.memory_gb, method=task.method)
        out.append(record)
    return out


@dataclass(frozen=True)
class PlanFigures:
    makespan_s: float
    memory_utilisation: float  # GB-seconds used / GB-seconds the GPUs had during the makespan
    most_on_one_gpu: int  # the most tasks that ran at the same time on one GPU
    worst_overcommit_gb: float  # the most memory in use on one GPU beyond its size (0: none)


def figures(records: list[dict[str, Any]], inventory: Inventory) -> PlanFigures:
    start = min(r["start"] for r in records)
    makespan = max(r["end"] for r in records) - start
    used = sum(r["memory_gb"] * (r["end"] - r["start"]) for r in records)
    capacity = inventory.total_gpus * inventory.gpu_memory_gb * makespan
    most, over = 0, 0.0
    by_gpu: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        for gpu in r["gpus"]:
            by_gpu.setdefault((r["node"], gpu), []).append(r)
    for runs in by_gpu.values():
        for r in runs:  # at each task's start, what else was running on its GPU
            now = [o for o in runs if o["start"] <= r["start"] < o["end"]]
            most = max(most, len(now))
            over = max(over, sum(o["memory_gb"] for o in now) - inventory.gpu_memory_gb)
    return PlanFigures(makespan, used / capacity if capacity else 0.0, most, max(over, 0.0))
