"""GPU visibility per vendor, translated into what Ray 2.60 expects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

ONEAPI_SELECTOR = "ONEAPI_DEVICE_SELECTOR"
VISIBLE_VARS = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES",
                "intel": "ZE_AFFINITY_MASK"}


def visible_count(value: str | None) -> int | None:
    """Devices listed in a *_VISIBLE_DEVICES-style variable; None when it is unset."""
    if value is None:
        return None
    value = value.strip()
    if value in ("", "NoDevFiles", "-1"):
        return 0
    return len([v for v in value.split(",") if v.strip()])


@dataclass
class GpuEnvironment:
    """Variables to set (None: unset) and the number of GPUs this node's process can see."""

    changes: dict[str, str | None] = field(default_factory=dict)
    visible: int | None = None


def translate(vendor: str, env: Mapping[str, str], planned: int = 0) -> GpuEnvironment:
    """What the node agent changes in Ray's environment; `planned`: the allocation's GPUs
    on this node."""
    out = GpuEnvironment()
    if vendor == "nvidia":
        out.visible = visible_count(env.get("CUDA_VISIBLE_DEVICES"))
    elif vendor == "amd":
        # Slurm sets ROCR_VISIBLE_DEVICES; Ray refuses it unless HIP_VISIBLE_DEVICES is set.
        # ROCR already restricts (and renumbers) the devices, so HIP sees 0..n-1 of them.
        rocr = env.get("ROCR_VISIBLE_DEVICES")
        hip = env.get("HIP_VISIBLE_DEVICES")
        if rocr is not None and hip is None:
            n = visible_count(rocr) or 0
            out.changes["HIP_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
            out.visible = n
        else:
            out.visible = visible_count(hip)
    elif vendor == "intel":
        # FLAT exposes each tile as a device. The node's processes are pinned to level_zero
        # and to the node's tiles as they are numbered after any ZE_AFFINITY_MASK the
        # launcher set, as ALCF's Ray recipe for Aurora pins ONEAPI_DEVICE_SELECTOR per node.
        # Ray 2.60 then gives each GPU task its tiles through ZE_AFFINITY_MASK, which
        # masks below the selector, so the two compose.
        out.changes["ZE_FLAT_DEVICE_HIERARCHY"] = "FLAT"
        out.visible = visible_count(env.get("ZE_AFFINITY_MASK"))
        tiles = planned if out.visible is None else out.visible
        if tiles:
            out.changes[ONEAPI_SELECTOR] = "level_zero:" + ",".join(map(str, range(tiles)))
    return out


def node_gpu_count(planned: int, visible: int | None) -> int:
    """The allocation's count, but never more than the process can actually see."""
    if visible is None:
        return planned
    return min(planned, visible) if planned else visible


def intel_task_isolation(find_spec=None) -> str | None:
    """Why Ray cannot give each GPU task only its own Intel tiles here, or None. Ray 2.60
    treats the GPU resource as Intel's (and sets ZE_AFFINITY_MASK per task) only when dpctl
    finds the devices; without dpctl it falls back to NVIDIA's CUDA_VISIBLE_DEVICES, which
    Intel's runtime ignores, and every task sees all of the node's tiles."""
    import importlib.util

    if (find_spec or importlib.util.find_spec)("dpctl") is None:
        return ("dpctl is not importable: Ray cannot pin GPU tasks to their tiles, every GPU "
                "task sees all of the node's tiles (ALCF's frameworks module provides dpctl)")
    return None
