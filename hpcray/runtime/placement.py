"""From a `Resources` spec to Ray: actor/task options, placement bundles, and whether the
cluster's nodes can hold the work at all (checked before anything is submitted)."""

from __future__ import annotations

from typing import Any

from hpcray.spec.resources import Resources


def node_resource(name: str) -> str:
    """The per-node custom resource, so a task can be pinned to a node by name."""
    return f"hpcray-node:{name}"


NODE_LABEL = "hpcray/node"


def node_label(name: str) -> str:
    """The node's value of the `hpcray/node` label (Ray labels follow Kubernetes syntax: at
    most 63 characters), so work can be placed on any node of a set by a label selector."""
    return name if len(name) <= 63 else name.split(".")[0][:63]


def scaled(res: Resources, k: int) -> Resources:
    """`k` units' worth of `res`, as one unit (the processes a launched task puts on a node)."""
    if k == 1:
        return res
    return res.model_copy(update={
        "cpus": res.cpus * k, "gpus": res.gpus * k,
        "memory": res.memory * k if res.memory else res.memory,
        "resources": {name: v * k for name, v in res.resources.items()}})


def custom_resources(res: Resources) -> dict[str, float]:
    """The custom resources, plus the per-node resource that pins work to `node`."""
    custom = dict(res.resources)
    if res.node:
        custom[node_resource(res.node)] = 0.001
    return custom


def ray_options(res: Resources) -> dict[str, Any]:
    """`num_cpus`, `num_gpus`, `resources`, `memory` and the node label selector."""
    options: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus,
                               "resources": custom_resources(res)}
    if res.memory:
        options["memory"] = res.memory
    if res.nodes:
        options["label_selector"] = {
            NODE_LABEL: f"in({','.join(node_label(n) for n in res.nodes)})"}
    return options


def bundle(res: Resources) -> dict[str, float]:
    """One placement-group bundle holding a whole unit."""
    out = {"CPU": res.cpus, "GPU": res.gpus, **custom_resources(res)}
    return {k: v for k, v in out.items() if v}


def need(res: Resources) -> dict[str, float]:
    out = {"CPU": res.cpus, "GPU": res.gpus, **custom_resources(res)}
    if res.memory:
        out["memory"] = res.memory
    return {k: v for k, v in out.items() if v}


def unplaceable(res: Resources, nodes: list[dict[str, Any]], what: str,
                count: int = 1) -> str | None:
    """None if `count` distinct alive nodes (from `ray.nodes()`) can each hold one unit,
    else why not, with what each candidate node has."""
    wanted = need(res)
    allowed = {node_resource(n) for n in res.nodes or []}
    candidates = [n for n in nodes if n.get("Alive")
                  and (not allowed or allowed & set(n["Resources"]))]
    fit = [n for n in candidates
           if all(n["Resources"].get(k, 0) >= v for k, v in wanted.items())]
    if len(fit) >= count:
        return None
    have = [{k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU") or k in wanted
             or k.startswith("hpcray-node:")} for n in candidates]
    where = f" among nodes {res.nodes}" if allowed else ""
    if count == 1:
        return f"one {what} needs {wanted}, and no node{where} has that (nodes: {have})"
    return (f"one {what} needs {wanted} on {count} nodes; {len(fit)} node(s){where} have that "
            f"(nodes: {have})")


def bundles_unplaceable(bundles: list[dict[str, float]], nodes: list[dict[str, Any]],
                        what: str) -> str | None:
    """None if the alive nodes can hold all `bundles` together (each bundle on one node,
    several bundles per node allowed, as PACK places them), else why not."""
    free = [dict(n["Resources"]) for n in nodes if n.get("Alive")]
    for one in sorted(bundles, key=lambda b: -b.get("GPU", 0)):
        home = next((f for f in free if all(f.get(k, 0) >= v for k, v in one.items())), None)
        if home is None:
            total = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
            have = [{k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")}
                    for n in nodes if n.get("Alive")]
            return (f"one {what} needs {len(bundles)} bundles ({total['CPU']:g} CPUs and "
                    f"{total['GPU']:g} GPUs in all), and the nodes cannot hold them together "
                    f"(nodes: {have})")
        for k, v in one.items():
            home[k] -= v
    return None

