"""GPU visibility per vendor, translated into what Ray 2.60 expects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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


def translate(vendor: str, env: Mapping[str, str]) -> GpuEnvironment:
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
        # FLAT exposes each tile as a device; Ray detects Intel GPUs only with dpctl, so the
        # count is always passed explicitly and Ray must leave ONEAPI_DEVICE_SELECTOR alone.
        out.changes["ZE_FLAT_DEVICE_HIERARCHY"] = "FLAT"
        out.changes["RAY_EXPERIMENTAL_NOSET_ONEAPI_DEVICE_SELECTOR"] = "1"
        out.visible = visible_count(env.get("ZE_AFFINITY_MASK"))
    return out


def node_gpu_count(planned: int, visible: int | None) -> int:
    """The allocation's count, but never more than the process can actually see."""
    if visible is None:
        return planned
    return min(planned, visible) if planned else visible
