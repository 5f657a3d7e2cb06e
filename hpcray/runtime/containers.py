"""The command line that runs a program in a container image, one small function per runtime
(as dask-jobqueue has one module per scheduler), and the checks made before submission.

Every function returns an argv list: nothing goes through a shell, so an image name, a bind
or a variable's value is never interpreted twice. What each runtime is given:

- binds: the default binds the caller names (the run directory and the workflow directory, at
  the same paths inside), skipped where the user binds that path themselves, then the user's;
- the environment: the caller's `env` (GPU visibility, HPCRAY_* variables) then the
  container's own `env`, which wins; `inherit` names variables passed through with the
  value they have where the runtime starts (a node name that only the launcher's step knows);
- the working directory; the site's options, then the user's; the GPUs, the runtime's way.

Services must be reachable on the node's address, so no runtime gets a network namespace of
its own (apptainer, shifter, charliecloud and enroot share the host's; podman is given
`--network=host`). How a stop reaches the program (the caller signals the process it
started, and its process group):

- apptainer/singularity: the starter process forwards SIGTERM to the program;
- shifter, charliecloud (ch-run) and enroot exec the program in the same process (enroot
  through a chain of execs), so the signal reaches it directly;
- podman/podman-hpc: the program runs under conmon, not under the podman client; the client
  forwards the signals it gets (`--sig-proxy`, on by default) to the container's init
  (`--init`: catatonit), which passes them to the program and reaps its children; `--rm`
  removes the container when it ends. A SIGKILL of the client does not reach the container:
  hpcray's teardown then finds its processes by the job's marker (HPCRAY_RAY_OF), which the
  caller passes into the container's environment.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcray.errors import SpecError
from hpcray.sites.profile import SiteProfile
from hpcray.spec.checks import containers
from hpcray.spec.containers import ContainerSpec
from hpcray.spec.models import Workflow

# The executable each runtime is started with.
BINARIES: dict[str, str] = {
    "apptainer": "apptainer", "singularity": "singularity", "podman-hpc": "podman-hpc",
    "shifter": "shifter", "charliecloud": "ch-run", "enroot": "enroot", "podman": "podman",
}
# GPU visibility as the schedulers and Ray set it (runtime/gpus.py): what a task or replica
# was given must hold inside the image too.
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
            "ZE_AFFINITY_MASK", "ONEAPI_DEVICE_SELECTOR", "ZE_FLAT_DEVICE_HIERARCHY")
# What MPI launchers tell each rank (Slurm, Cray PALS, MPICH's PMI, Open MPI, Flux), passed
# through to ranks that run in podman, which starts from an empty environment.
RANK_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS", "PMI_RANK",
             "PMI_SIZE", "PMI_LOCAL_RANK", "PALS_RANKID", "PALS_LOCAL_RANKID", "PALS_NODEID",
             "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
             "FLUX_TASK_RANK", "FLUX_TASK_LOCAL_ID")
# Image names a runtime pulls or looks up itself rather than a path on this host.
_REMOTE = ("docker://", "oras://", "library://", "shub://", "http://", "https://",
           "docker-archive:", "oci-archive:", "instance://")


@dataclass(frozen=True)
class Mount:
    src: str
    dst: str
    ro: bool = False


@dataclass(frozen=True)
class _Call:
    """What every runtime function gets: the resolved spec and the pieces of its command."""

    spec: ContainerSpec
    mounts: list[Mount]
    env: dict[str, str]
    inherit: list[str]
    workdir: str | None
    argv: list[str]

    @property
    def vendor(self) -> str | None:
        return self.spec.gpu_vendor if self.spec.gpus else None


def parse_bind(bind: str) -> Mount:
    """'host[:container[:ro|rw]]' (ContainerSpec checked the form)."""
    parts = bind.split(":")
    return Mount(parts[0], parts[1] if len(parts) > 1 and parts[1] else parts[0],
                 len(parts) == 3 and parts[2] == "ro")


def mounts(container: ContainerSpec, defaults: Sequence[str]) -> list[Mount]:
    """The default binds (same path inside: HPCRAY_RUN_DIR and the commands name them so)
    unless that path inside is already bound (by the user, or by a default directory above
    it), then the user's. A path a runtime's bind syntax cannot carry is refused here, not by
    the runtime on a node."""
    user = [parse_bind(b) for b in container.binds]
    paths = [os.path.normpath(p) for p in defaults]
    same = [m.src for m in user if m.src == m.dst] + paths
    taken = {m.dst for m in user}

    def covered(path: str) -> bool:
        return path in taken or any(path != p and path.startswith(p.rstrip("/") + "/")
                                    for p in same)

    out: list[Mount] = []
    for path in dict.fromkeys(paths):
        if not covered(path):
            out.append(Mount(path, path))
    for m in out + user:
        bad = next((c for c in ":,\n\r\x00" if c in m.src + m.dst), None)
        if bad is None and container.runtime == "enroot" and any(
                c.isspace() for c in m.src + m.dst):
            bad = " "
        if bad is not None:
            raise SpecError(f"{m.src!r} cannot be bound into a container: {bad!r} separates "
                            "the fields of a bind", field="container.binds")
    return out + user


def _env(call: _Call) -> dict[str, str]:
    return {**call.env, **call.spec.env}


# -- one function per runtime ------------------------------------------------------------------
def _csv_item(item: str) -> str:
    """apptainer reads --env as comma-separated NAME=VALUE pairs (CSV): a value with a comma
    or a quote is quoted so it stays one pair."""
    if not any(c in item for c in ',"'):
        return item
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([item])
    return buf.getvalue()


def apptainer(call: _Call) -> list[str]:
    """`apptainer exec`: the host's network and environment are kept; --nv (NVIDIA) and
    --rocm (AMD) bind the driver's libraries and devices; Intel GPUs are /dev/dri."""
    spec = call.spec
    cmd = [spec.runtime or "apptainer", "exec"]
    if call.vendor == "nvidia":
        cmd.append("--nv")
    elif call.vendor == "amd":
        cmd.append("--rocm")
    elif call.vendor == "intel":
        cmd += ["--bind", "/dev/dri"]
    for m in call.mounts:
        cmd += ["--bind", f"{m.src}:{m.dst}" + (":ro" if m.ro else "")]
    for name, value in _env(call).items():
        cmd += ["--env", _csv_item(f"{name}={value}")]
    if call.workdir:
        cmd += ["--pwd", call.workdir]
    return cmd + spec.options + [spec.image, *call.argv]


def _podman_common(call: _Call, binary: str) -> list[str]:
    # --init: catatonit as PID 1 forwards SIGTERM to the program and reaps its children (a
    # program that is PID 1 itself ignores SIGTERM unless it handles it).
    # the host's network, hostname (the node's name and address) and shared memory (Ray's
    # object store, NCCL)
    cmd = [binary, "run", "--rm", "--init", "--network=host", "--uts=host", "--ipc=host"]
    if call.vendor == "amd":
        cmd += ["--device", "/dev/kfd", "--device", "/dev/dri"]
    elif call.vendor == "intel":
        cmd += ["--device", "/dev/dri"]
    return cmd


def _podman_rest(call: _Call) -> list[str]:
    cmd: list[str] = []
    for m in call.mounts:
        cmd += ["-v", f"{m.src}:{m.dst}" + (":ro" if m.ro else "")]
    for name, value in _env(call).items():
        cmd += ["-e", f"{name}={value}"]
    for name in call.inherit:  # -e NAME: the value where podman starts, when set there
        if name not in call.env and name not in call.spec.env:
            cmd += ["-e", name]
    if call.workdir:
        cmd += ["-w", call.workdir]
    return cmd + call.spec.options + [call.spec.image, *call.argv]


def podman(call: _Call) -> list[str]:
    """`podman run`: NVIDIA GPUs through CDI (`nvidia-ctk cdi generate` on the node), all of
    them, with CUDA_VISIBLE_DEVICES choosing by the host's numbering; AMD /dev/kfd and
    /dev/dri; Intel /dev/dri."""
    cmd = _podman_common(call, "podman")
    if call.vendor == "nvidia":
        cmd += ["--device", "nvidia.com/gpu=all"]
    return cmd + _podman_rest(call)


def podman_hpc(call: _Call) -> list[str]:
    """`podman-hpc run` (NERSC): podman's flags, and --gpu, its module that brings the host's
    NVIDIA driver in."""
    cmd = _podman_common(call, "podman-hpc")
    if call.vendor == "nvidia":
        cmd.append("--gpu")
    return cmd + _podman_rest(call)


def _env_prefix(env: dict[str, str], chdir: str | None = None) -> list[str]:
    """`env [--chdir=DIR] NAME=VALUE ... --` run inside the image, for runtimes with no flag
    for it: POSIX env in the image sets the variables and execs the program (same process)."""
    if not env and not chdir:
        return []
    return ["env", *([f"--chdir={chdir}"] if chdir else []),
            *(f"{k}={v}" for k, v in env.items())]


def shifter(call: _Call) -> list[str]:
    """`shifter --image=...` (NERSC): the caller's environment is passed in but the image's
    ENV overrides it and shifter has no flag to set a variable, so `env NAME=VALUE` runs in
    the image first; --module=gpu brings the NVIDIA driver in."""
    spec = call.spec
    cmd = ["shifter", f"--image={spec.image}"]
    if call.vendor == "nvidia":
        cmd.append("--module=gpu")
    for m in call.mounts:
        cmd.append(f"--volume={m.src}:{m.dst}" + (":ro" if m.ro else ""))
    if call.workdir:
        cmd.append(f"--workdir={call.workdir}")
    return cmd + spec.options + ["--", *_env_prefix(_env(call)), *call.argv]


def charliecloud(call: _Call) -> list[str]:
    """`ch-run IMAGE -- argv`: the host's network, environment and /dev are kept (so GPU
    device files are there); the NVIDIA/ROCm user-space libraries are injected into the
    image beforehand with `ch-fromhost` (a build step, not a run flag). Binds are
    read-write only; with a read-only image their mount points must exist in it (or give
    --write in options). --env-no-expand: values are set as given, `$` included."""
    spec = call.spec
    cmd = ["ch-run"]
    for m in call.mounts:
        if m.ro:
            raise SpecError(f"bind {m.src}:{m.dst}:ro: ch-run binds read-write only; drop "
                            "':ro'", field="container.binds")
        cmd += ["-b", f"{m.src}:{m.dst}"]
    env = _env(call)
    if env:
        cmd.append("--env-no-expand")
    for name, value in env.items():
        cmd.append(f"--set-env={name}={value}")
    if call.workdir:
        cmd += ["-c", call.workdir]
    return cmd + spec.options + [spec.image, "--", *call.argv]


def enroot(call: _Call) -> list[str]:
    """`enroot start`: the host's network and /dev; NVIDIA GPUs through its libnvidia-container
    hook, turned on by NVIDIA_VISIBLE_DEVICES (all of them; CUDA_VISIBLE_DEVICES chooses by
    the host's numbering). enroot has no working-directory flag: `env --chdir` (GNU env) runs
    in the image first."""
    spec = call.spec
    cmd = ["enroot", "start"]
    for m in call.mounts:
        cmd += ["--mount", f"{m.src}:{m.dst}:none:x-create=auto,rbind" + (",ro" if m.ro else "")]
    env = _env(call)
    if call.vendor == "nvidia":
        env = {"NVIDIA_VISIBLE_DEVICES": "all",
               "NVIDIA_DRIVER_CAPABILITIES": "compute,utility", **env}
    for name, value in env.items():
        cmd += ["--env", f"{name}={value}"]
    for name in call.inherit:
        if name not in env:
            cmd += ["--env", name]
    return cmd + spec.options + [spec.image, *_env_prefix({}, call.workdir), *call.argv]


RUNTIMES: dict[str, Callable[[_Call], list[str]]] = {
    "apptainer": apptainer, "singularity": apptainer, "podman-hpc": podman_hpc,
    "shifter": shifter, "charliecloud": charliecloud, "enroot": enroot, "podman": podman,
}


def container_argv(container: ContainerSpec, argv: Sequence[str], *, binds: Sequence[str],
                   env: dict[str, str], workdir: str | None = None,
                   inherit: Sequence[str] = ()) -> list[str]:
    """The exact command line that runs `argv` in `container` (resolved: `runtime` set). See
    the module's docstring for what it passes in and how a stop reaches the program."""
    if container.runtime is None:
        raise SpecError("no container runtime: name one in the container's 'runtime' or "
                        "the site profile's container_runtime", field="container.runtime")
    if not argv:
        raise SpecError("nothing to run in the container", field="container")
    call = _Call(container, mounts(container, binds), dict(env), list(inherit), workdir,
                 list(argv))
    return RUNTIMES[container.runtime](call)


# -- before submission -------------------------------------------------------------------------
def resolve_container(container: ContainerSpec, site: SiteProfile, *,
                      base: Path | None = None) -> ContainerSpec:
    """The spec as the job uses it: the runtime from the site when the workflow names none,
    the site's options before the user's (only when it is the site's runtime: they are that
    runtime's flags), the site's GPU vendor, and an image path relative to the workflow's
    directory `base` made absolute (the job starts elsewhere). Idempotent."""
    runtime = container.runtime or site.container_runtime
    if runtime is None:
        raise SpecError(f"site '{site.name}' names no container_runtime; give the "
                        "container's 'runtime' (one of apptainer, singularity, podman-hpc, "
                        "shifter, charliecloud, enroot, podman)", field="container.runtime")
    if runtime == "charliecloud" and any(parse_bind(b).ro for b in container.binds):
        raise SpecError("ch-run binds read-write only; drop ':ro' from binds",
                        field="container.binds")
    options = list(container.options)
    site_options = site.container_options if runtime == site.container_runtime else []
    if container.gpu_vendor is None:  # not resolved yet: the site's options go first
        options = [*site_options, *options]
    image = container.image
    if base is not None and _is_path(runtime, image) and not os.path.isabs(image):
        image = str((base / image).resolve())
    return container.model_copy(update={
        "runtime": runtime, "options": options, "image": image,
        "gpu_vendor": container.gpu_vendor or site.gpu_vendor})


def resolve_workflow_containers(workflow: Workflow, site: SiteProfile,
                                base: Path | None = None) -> Workflow:
    """A copy of the workflow with allocation.container and every stage's and service's
    `container` resolved (resolve_container); an error names the field."""
    wf = workflow.model_copy(deep=True)
    owners: list[Any] = [wf.allocation, *wf.stages, *wf.services]
    for (loc, spec), owner in zip(containers(wf), [o for o in owners
                                                    if getattr(o, "container", None)],
                                  strict=True):
        try:
            owner.container = resolve_container(spec, site, base=base)
        except SpecError as exc:
            what = (exc.field or "container.runtime").split(".", 1)[1]
            raise SpecError(exc.reason, field=".".join(str(p) for p in (*loc, what))) \
                from None
    return wf


def _is_path(runtime: str, image: str) -> bool:
    """Whether the image names a file or directory on the filesystem (not a registry name)."""
    if image.startswith(_REMOTE):
        return False
    if runtime in ("apptainer", "singularity"):
        return True  # a .sif (or sandbox directory) unless a URI
    if runtime == "charliecloud":
        return "/" in image or image.startswith(".")
    if runtime == "enroot":
        return "/" in image or image.endswith(".sqsh")
    return False


def check_image(container: ContainerSpec, *, local: bool = False) -> str | None:
    """Why the (resolved) container cannot start, as far as the submitting host can tell;
    None when it can or cannot be known here. `local`: the run is on this machine (the
    local site), so the runtime must be installed here too."""
    runtime = container.runtime
    if runtime is None:
        return "no container runtime (the container's 'runtime' or the site's)"
    binary = BINARIES[runtime]
    found = shutil.which(binary)
    if local and found is None:
        return f"{runtime}: {binary!r} is not on this machine's PATH (the run is local)"
    image = container.image
    if _is_path(runtime, image):
        if not os.path.exists(image):
            return f"{image} does not exist"
        if runtime == "charliecloud" and not os.path.isdir(image) and \
                not image.endswith((".sqfs", ".squashfs", ".sqsh")):
            return f"{image} is not an image directory (nor a SquashFS file)"
        return None
    if runtime in ("podman", "podman-hpc") and found is not None:
        try:
            proc = subprocess.run([binary, "image", "exists", image], capture_output=True,
                                  timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None  # cannot tell here; the node will
        if proc.returncode == 1:
            return (f"image {image!r} is not in {binary}'s local storage; `{binary} pull` "
                    "it first (a node must not pull it at start)")
    return None
