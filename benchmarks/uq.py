"""UQ task packing: makespan and GPU-memory utilisation of packing by memory against one task
per GPU, on the same simulated inventory in the same run (rounds alternate which goes first).

    python benchmarks/uq.py [--nodes 4] [--gpus 4] [--gpu-memory 40] [--rounds 3]

A Ray cluster of `nodes` nodes with `gpus` fake GPUs each (Ray schedules fractional GPUs the
same way whether or not they exist). The plan is the paper's shape: 4 models whose needs
come from the memory estimate (1.1B at batch 8: 8.8 GB, 3B at batch 4: 12.5 GB, 7B and 13B
at batch 1: 17.1 and 30.7 GB) x 4 seeds x 3 methods (LoRA, a 4-adapter ensemble, Laplace),
each task holding its share for its relative cost x 2 s, after one warm-up pass.
Writes benchmarks/results/uq.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results_io import pyplot, save  # noqa: E402
from hpcray.pipelines.uq.packing import (  # noqa: E402
    Inventory,
    ModelShape,
    UQTask,
    check_plan,
    estimate_memory_gb,
    longest_first,
    method_cost,
)
from hpcray.pipelines.uq.simulate import figures, run_plan  # noqa: E402


def plan(seeds: int) -> list[UQTask]:
    shapes = {"tinyllama-1.1b": (ModelShape(1_100_000_000, 2048, 22), 8),
              "llama-3b": (ModelShape(3_000_000_000, 3072, 28), 4),
              "llama-7b": (ModelShape(7_000_000_000, 4096, 32), 1),
              "llama-13b": (ModelShape(13_000_000_000, 5120, 40), 1)}
    needs = {name: estimate_memory_gb(shape, batch=batch)
             for name, (shape, batch) in shapes.items()}
    return longest_first([UQTask(model, seed, method, need, method_cost(method, 4))
                          for model, need in needs.items() for seed in range(seeds)
                          for method in ("lora", "ensemble", "laplace")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--gpu-memory", type=float, default=40.0)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds-per-cost", type=float, default=2.0)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=110)
    inventory = Inventory({f"n{i}": args.gpus for i in range(args.nodes)}, args.gpu_memory)
    tasks = plan(args.seeds)
    check_plan(tasks, inventory)
    needs = sorted({t.memory_gb for t in tasks})
    console.print(f"{len(tasks)} tasks, needs {', '.join(f'{n:g}' for n in needs)} GB, on "
                  f"{args.nodes} nodes x {args.gpus} GPUs of {args.gpu_memory:g} GB")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    rows = []
    try:
        for _ in range(args.nodes):
            # CPUs declared so Ray keeps enough idle workers for the packed tasks (they ask
            # for no CPU): with 1, it would stop and restart a worker per task
            cluster.add_node(num_cpus=16, num_gpus=args.gpus)
        ray.init(address=cluster.address, logging_level="ERROR")
        cluster.wait_for_nodes()
        # warm-up, not measured: starts the worker processes both modes then reuse
        run_plan(tasks, inventory, seconds_per_cost=0.05)
        for r in range(args.rounds):
            order = ["packed", "one per GPU"] if r % 2 == 0 else ["one per GPU", "packed"]
            for mode in order:
                fig = figures(run_plan(tasks, inventory, seconds_per_cost=args.seconds_per_cost,
                                       whole_gpus=mode == "one per GPU"), inventory)
                rows.append({"round": r, "mode": mode, "makespan_s": fig.makespan_s,
                             "memory_utilisation": fig.memory_utilisation,
                             "most_tasks_on_one_gpu": fig.most_on_one_gpu,
                             "overcommit_gb": fig.worst_overcommit_gb})
    finally:
        ray.shutdown()
        cluster.shutdown()
    table = Table(title="UQ packing on a simulated inventory (median of rounds)")
    for col in ("mode", "makespan (s)", "GPU memory used", "most tasks on one GPU",
                "overcommit (GB)"):
        table.add_column(col, justify="right")
    med = {}
    for mode in ("packed", "one per GPU"):
        mine = [row for row in rows if row["mode"] == mode]
        med[mode] = statistics.median(row["makespan_s"] for row in mine)
        table.add_row(mode, f"{med[mode]:.2f}",
                      f"{statistics.median(row['memory_utilisation'] for row in mine):.0%}",
                      str(max(row["most_tasks_on_one_gpu"] for row in mine)),
                      f"{max(row['overcommit_gb'] for row in mine):g}")
    console.print(table)
    console.print(f"makespan, packed / one per GPU: {med['packed'] / med['one per GPU']:.2f}x")
    save("uq", rows, console, lambda path: draw(rows, path))
    return 0


def draw(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    modes = ["packed", "one per GPU"]
    for ax, key, label in ((a, "makespan_s", "makespan (s)"),
                           (b, "memory_utilisation", "GPU memory used (share)")):
        ax.boxplot([[r[key] for r in rows if r["mode"] == m] for m in modes])
        ax.set_xticks([1, 2], modes)
        ax.set_ylabel(label)
    fig.suptitle("UQ tasks: packing by memory against one task per GPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
