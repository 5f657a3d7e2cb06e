"""Packing the UQ tasks onto GPUs by memory.

Each task (model x seed x method) declares, or gets an estimate of, the GPU memory it needs.
A task asks Ray for `need / gpu_memory` of a GPU: Ray keeps fractional GPU requests on one
physical GPU each, so several small tasks share a GPU while their needs fit in its memory,
and a task that needs more than half a GPU never shares with another of its size. The whole
inventory (every GPU of every node) is used at once. Tasks are submitted longest first
(LPT), and ties alternate between methods, so no method's tasks wait at the end.

GPU memory is per allocation (one GPU model per site: 40 or 80 GB A100, 64 GB per MI250X
GCD, 64 GB per Max 1550 tile); a mixed-GPU allocation would need one pool per model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby, zip_longest

from hpcray.errors import SpecError

GB = 1024**3
# relative running time of a method against one LoRA fine-tuning (same model and data)
# relative to one LoRA adapter; measured on the tiny Llama (CPU, 4 epochs, 8 samples):
# Laplace 2.2x (a backward pass per training question and per test option), MC dropout 1.8x
# ensemble: None, its cost is its size (one LoRA training per adapter)
METHOD_COST: dict[str, float | None] = {"lora": 1.0, "ensemble": None, "mc_dropout": 1.8,
                                        "laplace": 2.2}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know of a checkpoint (from its config.json)."""
    parameters: int
    hidden: int
    layers: int
    dtype: str = "bfloat16"


@dataclass
class UQTask:
    model: str
    seed: int
    method: str
    memory_gb: float  # GPU memory it needs (declared, or estimated)
    cost: float = 1.0  # relative duration, for longest-first ordering

    @property
    def key(self) -> str:
        return f"{self.model}/seed{self.seed}/{self.method}"


def estimate_memory_gb(shape: ModelShape, *, lora_rank: int = 8, lora_targets: int = 2,
                       batch: int = 4, seq: int = 512, ensemble: int = 1) -> float:
    """Frozen weights in their dtype; LoRA weights, gradients and Adam state in float32 (for
    every adapter an ensemble keeps); activations kept for the backward pass (about 16 values
    of the hidden size per token and layer, in the weights' dtype); 10% and 0.5 GB for the
    CUDA context and the allocator."""
    width = BYTES.get(shape.dtype, 2)
    weights = shape.parameters * width
    lora = 2 * lora_rank * shape.hidden * lora_targets * shape.layers * 4 * 4 * ensemble
    activations = 16 * batch * seq * shape.hidden * shape.layers * width
    return round((weights + lora + activations) * 1.1 / GB + 0.5, 2)


def method_cost(method: str, ensemble: int = 4) -> float:
    if method not in METHOD_COST:
        raise SpecError(f"unknown UQ method {method!r}; methods: {', '.join(METHOD_COST)}")
    cost = METHOD_COST[method]
    return float(ensemble) if cost is None else float(cost)


def longest_first(tasks: list[UQTask]) -> list[UQTask]:
    """Longest (cost x memory) first; among equally long tasks, methods take turns."""

    def size(task: UQTask) -> float:
        return round(task.cost * task.memory_gb, 6)

    ordered: list[UQTask] = []
    for _, group in groupby(sorted(tasks, key=lambda t: (-size(t), t.key)), key=size):
        by_method: dict[str, list[UQTask]] = {}
        for task in group:
            by_method.setdefault(task.method, []).append(task)
        ordered += [t for row in zip_longest(*by_method.values()) for t in row if t is not None]
    return ordered


@dataclass(frozen=True)
class Inventory:
    """The GPUs the tasks may use: per node, how many, and the memory of each."""
    gpus_per_node: dict[str, int]
    gpu_memory_gb: float

    @property
    def total_gpus(self) -> int:
        return sum(self.gpus_per_node.values())


def gpu_share(task: UQTask, inventory: Inventory) -> float:
    """The fraction of one GPU a task asks Ray for. Needs are rounded up to 1/100 of a GPU,
    so rounding never lets two tasks together overrun a GPU's memory."""
    if task.memory_gb > inventory.gpu_memory_gb:
        raise SpecError(
            f"task {task.key} needs {task.memory_gb:g} GB of GPU memory; the largest GPU of "
            f"this allocation has {inventory.gpu_memory_gb:g} GB (set a smaller model, LoRA "
            "rank or batch, or use a site with larger GPUs)")
    return min(1.0, math.ceil(task.memory_gb / inventory.gpu_memory_gb * 100) / 100)


def check_plan(tasks: list[UQTask], inventory: Inventory) -> None:
    """Every task fits some GPU: raised before anything runs."""
    if inventory.total_gpus == 0:
        raise SpecError("no GPU in the allocation for GPU tasks (use cpu mode)")
    for task in tasks:
        gpu_share(task, inventory)


def ray_options(task: UQTask, inventory: Inventory | None, cpus: float = 1.0) -> dict:
    """Ray task options: a share of one GPU by memory; in CPU mode, CPUs and host memory."""
    if inventory is None:
        return {"num_cpus": cpus, "memory": int(task.memory_gb * GB)}
    return {"num_cpus": 0, "num_gpus": gpu_share(task, inventory)}
