"""The `container:` block: the image a node's Ray, a service replica or a stage executable
runs in, and the runtime that starts it (docs/containers.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hpcray.spec.base import ENV_NAME, StrictModel, single_lines

GpuVendor = Literal["nvidia", "amd", "intel", "none"]
ContainerRuntime = Literal["apptainer", "singularity", "podman-hpc", "shifter", "charliecloud",
                           "enroot", "podman"]
RUNTIMES: tuple[str, ...] = ("apptainer", "singularity", "podman-hpc", "shifter",
                             "charliecloud", "enroot", "podman")


class ContainerSpec(StrictModel):
    """An image and how to run it. Every value becomes one argv element of the runtime's
    command line (no shell), so nothing in it is interpreted twice."""

    image: str = Field(min_length=1, description="What the runtime runs: a .sif file "
                       "(apptainer), an image name (podman, podman-hpc, shifter, enroot), "
                       "or an image directory (charliecloud).")
    runtime: ContainerRuntime | None = Field(
        None, description="Default: the site profile's container runtime.")
    binds: list[str] = Field(
        default_factory=list, description="'host_path[:container_path[:ro]]', besides the "
        "run directory and the workflow directory, which are always bound.")
    env: dict[str, str] = Field(default_factory=dict,
                                description="Variables set inside the container.")
    options: list[str] = Field(
        default_factory=list, description="Extra flags of the runtime's run command, after "
        "the site profile's own.")
    gpus: bool = Field(True, description="Pass the replica's or task's GPUs in, the "
                       "runtime's own way (--nv/--rocm, --gpu, CDI, device binds).")
    gpu_vendor: GpuVendor | None = Field(
        None, description="Filled in from the site profile when the workflow is resolved "
        "for submission (the command line depends on it); not set in a workflow file.")

    @field_validator("binds")
    @classmethod
    def _binds(cls, value: list[str]) -> list[str]:
        for bind in value:
            parts = bind.split(":")
            if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in (
                    "ro", "rw")) or any(c in bind for c in "\n\r\x00,"):
                raise ValueError(f"bind {bind!r} is not 'host_path[:container_path[:ro]]'")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if any(c in str(val) for c in "\n\r\x00"):
                raise ValueError(f"the value of {name} contains a newline")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        return single_lines(value, "option")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if any(c in value for c in "\n\r\x00") or value.startswith("-"):
            raise ValueError(f"{value!r} is not an image name or path")
        return value
