"""Driver for the quick start: one task pinned to each node of the cluster, then a summary."""

from __future__ import annotations

import os
import socket

import ray

from hpcray.runtime.placement import node_resource


@ray.remote(num_cpus=1)
def where_am_i(i: int) -> dict:
    return {"task": i, "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_node": os.environ.get("SLURMD_NODENAME"),
            "node_id": ray.get_runtime_context().get_node_id()}


def main(tasks_per_node: int = 2) -> dict:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    report = {"nodes": {}, "tasks": []}
    refs = []
    for node in nodes:
        label = next(r for r in node["Resources"] if r.startswith("hpcray-node:"))
        name = label.split(":", 1)[1]
        report["nodes"][name] = {"cpus": node["Resources"].get("CPU", 0),
                                 "gpus": node["Resources"].get("GPU", 0),
                                 "node_id": node["NodeID"]}
        pin = {node_resource(name): 0.001}
        refs += [where_am_i.options(resources=pin).remote(i) for i in range(tasks_per_node)]
    report["tasks"] = ray.get(refs)
    print(f"cluster: {len(nodes)} node(s)")
    for name, res in report["nodes"].items():
        ran = sum(1 for t in report["tasks"] if t["node_id"] == res["node_id"])
        print(f"  {name}: {res['cpus']:.0f} CPUs, {res['gpus']:.0f} GPUs, ran {ran} task(s)")
    return report
