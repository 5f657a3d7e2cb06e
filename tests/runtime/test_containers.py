"""The command lines hpcray builds for each container runtime and GPU vendor, exactly; the
resolution of a `container:` block against a site; the image checks made before submission."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hpcray.errors import SpecError
from hpcray.runtime.containers import check_image, container_argv, mounts, resolve_container
from hpcray.sites import load_site
from hpcray.spec.containers import ContainerSpec

RUN, WF = "/scratch/runs/r1", "/home/u/wf"
ARGV = ["python3", "train.py", "--lr", "1e-3"]


def argv(runtime: str, vendor: str | None, image: str = "img:1", **spec) -> list[str]:
    container = ContainerSpec(image=image, runtime=runtime, gpu_vendor=vendor, **spec)
    return container_argv(container, ARGV, binds=[RUN, WF],
                          env={"CUDA_VISIBLE_DEVICES": "1", "HPCRAY_STAGE": "train"},
                          workdir=WF)


BINDS = {"apptainer": ["--bind", f"{RUN}:{RUN}", "--bind", f"{WF}:{WF}"],
         "podman": ["-v", f"{RUN}:{RUN}", "-v", f"{WF}:{WF}"]}
PODMAN_ENV = ["-e", "CUDA_VISIBLE_DEVICES=1", "-e", "HPCRAY_STAGE=train", "-w", WF]
PODMAN = ["run", "--rm", "--init", "--network=host", "--uts=host", "--ipc=host"]


@pytest.mark.parametrize(("runtime", "vendor", "expected"), [
    ("apptainer", "nvidia", ["apptainer", "exec", "--nv", *BINDS["apptainer"],
                             "--env", "CUDA_VISIBLE_DEVICES=1", "--env", "HPCRAY_STAGE=train",
                             "--pwd", WF, "/img/a.sif", *ARGV]),
    ("apptainer", "amd", ["apptainer", "exec", "--rocm", *BINDS["apptainer"],
                          "--env", "CUDA_VISIBLE_DEVICES=1", "--env", "HPCRAY_STAGE=train",
                          "--pwd", WF, "/img/a.sif", *ARGV]),
    ("singularity", "intel", ["singularity", "exec", "--bind", "/dev/dri",
                              *BINDS["apptainer"], "--env", "CUDA_VISIBLE_DEVICES=1",
                              "--env", "HPCRAY_STAGE=train", "--pwd", WF, "/img/a.sif", *ARGV]),
    ("apptainer", "none", ["apptainer", "exec", *BINDS["apptainer"],
                           "--env", "CUDA_VISIBLE_DEVICES=1", "--env", "HPCRAY_STAGE=train",
                           "--pwd", WF, "/img/a.sif", *ARGV]),
    ("podman", "nvidia", ["podman", *PODMAN, "--device", "nvidia.com/gpu=all",
                          *BINDS["podman"], *PODMAN_ENV, "img:1", *ARGV]),
    ("podman", "amd", ["podman", *PODMAN, "--device", "/dev/kfd", "--device", "/dev/dri",
                       *BINDS["podman"], *PODMAN_ENV, "img:1", *ARGV]),
    ("podman", "intel", ["podman", *PODMAN, "--device", "/dev/dri", *BINDS["podman"],
                         *PODMAN_ENV, "img:1", *ARGV]),
    ("podman-hpc", "nvidia", ["podman-hpc", *PODMAN, "--gpu", *BINDS["podman"], *PODMAN_ENV,
                              "img:1", *ARGV]),
    ("podman-hpc", "amd", ["podman-hpc", *PODMAN, "--device", "/dev/kfd", "--device",
                           "/dev/dri", *BINDS["podman"], *PODMAN_ENV, "img:1", *ARGV]),
    ("shifter", "nvidia", ["shifter", "--image=img:1", "--module=gpu", f"--volume={RUN}:{RUN}",
                           f"--volume={WF}:{WF}", f"--workdir={WF}", "--", "env",
                           "CUDA_VISIBLE_DEVICES=1", "HPCRAY_STAGE=train", *ARGV]),
    ("shifter", "amd", ["shifter", "--image=img:1", f"--volume={RUN}:{RUN}",
                        f"--volume={WF}:{WF}", f"--workdir={WF}", "--", "env",
                        "CUDA_VISIBLE_DEVICES=1", "HPCRAY_STAGE=train", *ARGV]),
    ("charliecloud", "nvidia", ["ch-run", "-b", f"{RUN}:{RUN}", "-b", f"{WF}:{WF}",
                                "--env-no-expand", "--set-env=CUDA_VISIBLE_DEVICES=1",
                                "--set-env=HPCRAY_STAGE=train", "-c", WF, "/img/dir", "--",
                                *ARGV]),
    ("enroot", "nvidia", ["enroot", "start", "--mount", f"{RUN}:{RUN}:none:x-create=auto,rbind",
                          "--mount", f"{WF}:{WF}:none:x-create=auto,rbind",
                          "--env", "NVIDIA_VISIBLE_DEVICES=all",
                          "--env", "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
                          "--env", "CUDA_VISIBLE_DEVICES=1", "--env", "HPCRAY_STAGE=train",
                          "/img/r.sqsh", "env", f"--chdir={WF}", *ARGV]),
    ("enroot", "amd", ["enroot", "start", "--mount", f"{RUN}:{RUN}:none:x-create=auto,rbind",
                       "--mount", f"{WF}:{WF}:none:x-create=auto,rbind",
                       "--env", "CUDA_VISIBLE_DEVICES=1", "--env", "HPCRAY_STAGE=train",
                       "/img/r.sqsh", "env", f"--chdir={WF}", *ARGV]),
])
def test_exact_command_line_per_runtime_and_vendor(runtime, vendor, expected):
    image = {"apptainer": "/img/a.sif", "singularity": "/img/a.sif",
             "charliecloud": "/img/dir", "enroot": "/img/r.sqsh"}.get(runtime, "img:1")
    assert argv(runtime, vendor, image) == expected


def test_gpus_false_passes_no_gpu_flags():
    assert "--nv" not in argv("apptainer", "nvidia", gpus=False)
    assert "--gpu" not in argv("podman-hpc", "nvidia", gpus=False)


def test_user_binds_env_and_options_come_after_the_defaults():
    got = argv("podman", "none", binds=["/data:/in:ro", f"/elsewhere:{WF}", "/scratch"],
               env={"CUDA_VISIBLE_DEVICES": "0", "X": "a b"}, options=["--shm-size=8g"])
    # the user binds the workflow directory's path themselves, and /scratch, which holds the
    # run directory at the same path: neither default bind is needed
    assert got[got.index("-v"):] == [
        "-v", "/data:/in:ro", "-v", f"/elsewhere:{WF}", "-v", "/scratch:/scratch",
        "-e", "CUDA_VISIBLE_DEVICES=0", "-e", "HPCRAY_STAGE=train", "-e", "X=a b",
        "-w", WF, "--shm-size=8g", "img:1", *ARGV]
    # the container's env wins over the caller's (one -e, the user's value)
    assert got.count("-e") == 3


def test_a_default_directory_under_another_is_bound_once():
    spec = ContainerSpec(image="i", runtime="podman")
    assert [m.src for m in mounts(spec, ["/wf/runs/r1", "/wf", "/wf"])] == ["/wf"]
    # bound by the user elsewhere inside: the run directory is still bound at its own path
    spec = ContainerSpec(image="i", runtime="podman", binds=["/wf:/work"])
    assert [(m.src, m.dst) for m in mounts(spec, ["/wf"])] == [("/wf", "/wf"),
                                                              ("/wf", "/work")]


def test_apptainer_quotes_a_value_with_a_comma_as_csv():
    got = argv("apptainer", "none", image="/a.sif", env={"LIST": 'a,"b"'})
    assert got[got.index("--pwd") - 1] == '"LIST=a,""b"""'


def test_inherited_names_pass_through_podman_and_enroot_only():
    spec = ContainerSpec(image="i", runtime="podman", gpu_vendor="none")
    got = container_argv(spec, ["x"], binds=[], env={}, inherit=["SLURMD_NODENAME"])
    assert got[-4:] == ["-e", "SLURMD_NODENAME", "i", "x"]
    spec = spec.model_copy(update={"runtime": "enroot"})
    got = container_argv(spec, ["x"], binds=[], env={}, inherit=["SLURMD_NODENAME"])
    assert got[-4:] == ["--env", "SLURMD_NODENAME", "i", "x"]
    spec = spec.model_copy(update={"runtime": "apptainer"})  # passes the environment anyway
    assert "SLURMD_NODENAME" not in container_argv(spec, ["x"], binds=[], env={},
                                                   inherit=["SLURMD_NODENAME"])


def test_a_bind_a_runtime_cannot_express_is_refused():
    spec = ContainerSpec(image="i", runtime="podman")
    with pytest.raises(SpecError, match="separates the fields"):
        mounts(spec, ["/runs/a:b"])
    with pytest.raises(SpecError, match="read-write only"):
        argv("charliecloud", None, image="/d", binds=["/x:/y:ro"])


def test_unresolved_runtime_is_an_error():
    with pytest.raises(SpecError, match="no container runtime"):
        container_argv(ContainerSpec(image="i"), ["x"], binds=[], env={})


def test_unknown_runtime_is_refused_by_the_spec():
    with pytest.raises(ValueError, match="runtime"):
        ContainerSpec(image="i", runtime="docker")  # type: ignore[arg-type]


# -- resolution against a site -------------------------------------------------------------------
@pytest.mark.parametrize(("site", "runtime", "vendor"), [
    ("perlmutter", "podman-hpc", "nvidia"), ("frontier", "apptainer", "amd"),
    ("polaris", "apptainer", "nvidia"), ("aurora", "apptainer", "intel"),
    ("delta", "apptainer", "nvidia"), ("local", "podman", "none")])
def test_site_names_runtime_and_vendor(site, runtime, vendor):
    got = resolve_container(ContainerSpec(image="docker://x"), load_site(site))
    assert (got.runtime, got.gpu_vendor) == (runtime, vendor)


def test_site_options_go_first_once_and_only_for_the_sites_runtime(tmp_path):
    site = load_site("frontier").model_copy(update={"container_options": ["--cleanenv"]})
    got = resolve_container(ContainerSpec(image="a.sif", options=["--fakeroot"]), site,
                            base=tmp_path)
    assert got.options == ["--cleanenv", "--fakeroot"]
    assert got.image == str(tmp_path / "a.sif")  # relative to the workflow's directory
    assert resolve_container(got, site) == got  # idempotent
    other = resolve_container(ContainerSpec(image="i", runtime="podman", options=["-q"]), site)
    assert other.options == ["-q"]


def test_no_runtime_anywhere_names_the_field():
    site = load_site("frontier").model_copy(update={"container_runtime": None})
    with pytest.raises(SpecError, match="container_runtime") as err:
        resolve_container(ContainerSpec(image="a.sif"), site)
    assert err.value.field == "container.runtime"


# -- the image, before submission ----------------------------------------------------------------
def test_missing_sif_and_charliecloud_directory(tmp_path):
    sif = tmp_path / "a.sif"
    spec = ContainerSpec(image=str(sif), runtime="apptainer")
    assert check_image(spec) == f"{sif} does not exist"
    sif.write_bytes(b"")
    assert check_image(spec) is None
    assert check_image(spec.model_copy(update={"image": "docker://x/y"})) is None
    ch = ContainerSpec(image=str(tmp_path / "img"), runtime="charliecloud")
    assert "does not exist" in (check_image(ch) or "")
    (tmp_path / "img").mkdir()
    assert check_image(ch) is None


def test_runtime_missing_on_a_local_run(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    spec = ContainerSpec(image="i:1", runtime="podman")
    assert "not on this machine's PATH" in (check_image(spec, local=True) or "")
    assert check_image(spec) is None  # a site's node may have it


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed here")
def test_podman_image_not_in_local_storage():
    name = "localhost/hpcray-no-such-image:0"
    assert subprocess.run(["podman", "image", "exists", name]).returncode == 1
    why = check_image(ContainerSpec(image=name, runtime="podman"), local=True)
    assert why is not None and "not in podman's local storage" in why
