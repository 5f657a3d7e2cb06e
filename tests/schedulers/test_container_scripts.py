"""allocation.container: the job script shows, quoted, what the launcher starts on every node
(the container's command line, then the image's Python running `hpcray node`), and
`hpcray up` launches exactly that. Ray in an image cannot run here (it needs an image with
Ray); these pin the command lines down."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from hpcray import api
from hpcray.bootstrap.launch import agent_argv
from hpcray.launchers import LaunchRequest, get_launcher
from hpcray.runtime.ports import CLAIM_DIR
from hpcray.sites import load_site
from hpcray.spec import loads_workflow

RUN = "/scratch/proj/hpcray-runs/demo-20261126-120000-abcd"
WF = "/WF"
AGENT = ["/opt/conda/bin/python", "-m", "hpcray", "node", "--run-dir", RUN]
CLAIMS = str(CLAIM_DIR)  # the host's port-claim directory, shared by the jobs of a node

WORKFLOW = """\
name: demo
allocation:
  nodes: 2
  account: BIO123
  python: /opt/conda/bin/python
  container:
    image: IMAGE
    RUNTIME
    env: {GREETING: "it's $HOME"}
"""

IMAGES = {"apptainer": "/sw/ray.sif", "podman-hpc": "ray:2.60", "shifter": "docker:ray:2.60",
          "podman": "ray:2.60", "charliecloud": "/sw/ray-dir", "enroot": "/sw/ray.sqsh"}


def render(site: str, runtime: str | None, tmp_path: Path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    image = IMAGES[runtime or load_site(site).container_runtime or "podman"]
    text = WORKFLOW.replace("IMAGE", image).replace(
        "RUNTIME", f"runtime: {runtime}" if runtime else "")
    if site == "delta":  # GPU jobs there charge the project's -delta-gpu account
        text = text.replace("account: BIO123", "account: bio123-delta-gpu")
    wf = loads_workflow(text, "demo.yaml")
    monkeypatch.setattr("hpcray.api.check_image", lambda c, local=False: None)
    return api.script(wf, site, run_dir=RUN).replace(str(tmp_path), WF)


def agent_line(text: str) -> list[str]:
    lines = text.splitlines()
    at = lines.index("# on every node, `hpcray up` has the launcher start:")
    return shlex.split(lines[at + 1].removeprefix("#   "))


BINDS_APPTAINER = ["--bind", f"{RUN}:{RUN}", "--bind", f"{WF}:{WF}", "--bind",
                   f"{CLAIMS}:{CLAIMS}"]


@pytest.mark.parametrize(("site", "runtime", "expected"), [
    ("frontier", None, ["apptainer", "exec", "--rocm", *BINDS_APPTAINER,
                        "--env", "GREETING=it's $HOME", "--pwd", RUN, "/sw/ray.sif", *AGENT]),
    ("perlmutter", None, [
        "podman-hpc", "run", "--rm", "--init", "--network=host", "--uts=host", "--ipc=host",
        "--gpu", "-v", f"{RUN}:{RUN}", "-v", f"{WF}:{WF}", "-v", f"{CLAIMS}:{CLAIMS}",
        "-e", "GREETING=it's $HOME",
        "-e", "HPCRAY_NODE_NAME", "-e", "SLURMD_NODENAME", "-e", "FLUX_NODE_NAME",
        "-e", "HPCRAY_RANK", "-e", "HPCRAY_LOCAL_RANK", "-e", "HPCRAY_NRANKS",
        "-e", "CUDA_VISIBLE_DEVICES", "-e", "ROCR_VISIBLE_DEVICES", "-e", "HIP_VISIBLE_DEVICES",
        "-e", "ZE_AFFINITY_MASK", "-e", "ONEAPI_DEVICE_SELECTOR",
        "-e", "ZE_FLAT_DEVICE_HIERARCHY", "-e", "HPCRAY_PORT_CLAIMS", "-e", "TMPDIR",
        "-w", RUN, "ray:2.60", *AGENT]),
    ("perlmutter", "shifter", [
        "shifter", "--image=docker:ray:2.60", "--module=gpu", f"--volume={RUN}:{RUN}",
        f"--volume={WF}:{WF}", f"--volume={CLAIMS}:{CLAIMS}", f"--workdir={RUN}", "--", "env",
        "GREETING=it's $HOME",
        *AGENT]),
    ("polaris", None, ["apptainer", "exec", "--nv", *BINDS_APPTAINER,
                       "--env", "GREETING=it's $HOME", "--pwd", RUN, "/sw/ray.sif", *AGENT]),
    ("aurora", None, ["apptainer", "exec", "--bind", "/dev/dri", *BINDS_APPTAINER,
                      "--env", "GREETING=it's $HOME", "--pwd", RUN, "/sw/ray.sif", *AGENT]),
    ("delta", "charliecloud", ["ch-run", "-b", f"{RUN}:{RUN}", "-b", f"{WF}:{WF}",
                               "-b", f"{CLAIMS}:{CLAIMS}",
                               "--env-no-expand", "--set-env=GREETING=it's $HOME", "-c", RUN,
                               "/sw/ray-dir", "--", *AGENT]),
    ("delta", "enroot", [
        "enroot", "start", "--mount", f"{RUN}:{RUN}:none:x-create=auto,rbind",
        "--mount", f"{WF}:{WF}:none:x-create=auto,rbind",
        "--mount", f"{CLAIMS}:{CLAIMS}:none:x-create=auto,rbind",
        "--env", "NVIDIA_VISIBLE_DEVICES=all",
        "--env", "NVIDIA_DRIVER_CAPABILITIES=compute,utility", "--env", "GREETING=it's $HOME",
        "--env", "HPCRAY_NODE_NAME", "--env", "SLURMD_NODENAME", "--env", "FLUX_NODE_NAME",
        "--env", "HPCRAY_RANK", "--env", "HPCRAY_LOCAL_RANK", "--env", "HPCRAY_NRANKS",
        "--env", "CUDA_VISIBLE_DEVICES", "--env", "ROCR_VISIBLE_DEVICES",
        "--env", "HIP_VISIBLE_DEVICES", "--env", "ZE_AFFINITY_MASK",
        "--env", "ONEAPI_DEVICE_SELECTOR", "--env", "ZE_FLAT_DEVICE_HIERARCHY",
        "--env", "HPCRAY_PORT_CLAIMS", "--env", "TMPDIR",
        "/sw/ray.sqsh", "env", f"--chdir={RUN}", *AGENT]),
])
def test_script_shows_the_agents_command_in_the_image(site, runtime, expected, tmp_path,
                                                      monkeypatch):
    text = render(site, runtime, tmp_path, monkeypatch)
    assert agent_line(text) == expected
    # `hpcray up` itself stays on the batch host, with the submitter's Python (it runs the
    # launcher); the image's Python is only the agents'
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("exec ") and last.endswith(f"-m hpcray up --run-dir {RUN}")
    assert "/opt/conda/bin/python -m hpcray up" not in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_slurm_script_exactly(tmp_path, monkeypatch):
    import sys

    text = render("frontier", None, tmp_path, monkeypatch)
    tail = text.split("export HPCRAY_PYTHON=", 1)[1]
    assert tail == (
        f"{shlex.quote(sys.executable)}\n"
        "# environment setup (site profile, then workflow)\n"
        "module load PrgEnv-gnu rocm\n"
        "# node agents, and Ray with everything it starts, run in the apptainer image "
        "/sw/ray.sif:\n"
        "# on every node, `hpcray up` has the launcher start:\n"
        f"#   apptainer exec --rocm --bind {RUN}:{RUN} --bind {WF}:{WF} --bind {CLAIMS}:{CLAIMS} "
        f"--env 'GREETING=it'\"'\"'s $HOME' --pwd {RUN} /sw/ray.sif /opt/conda/bin/python -m "
        f"hpcray node --run-dir {RUN}\n"
        f"exec {shlex.quote(sys.executable)} -m hpcray up --run-dir {RUN}\n")


def test_pbs_script_and_mpiexec_command(tmp_path, monkeypatch):
    text = render("polaris", None, tmp_path, monkeypatch)
    assert text.startswith("#!/bin/bash\n#PBS ")
    argv = agent_argv(RUN, "/opt/conda/bin/python", "mpiexec",
                      loads_workflow(WORKFLOW.replace("IMAGE", "/sw/ray.sif").replace(
                          "RUNTIME", "runtime: apptainer"), "d.yaml").allocation.container
                      .model_copy(update={"gpu_vendor": "nvidia"}), WF)
    assert list(argv) == agent_line(text)
    cmd = get_launcher("mpiexec").command(LaunchRequest(hosts=("x1", "x2"), argv=argv))
    assert cmd[:9] == ["mpiexec", "-n", "2", "--ppn", "1", "--hosts", "x1,x2", "--cpu-bind",
                       "none"]
    assert cmd[9:12] == ["apptainer", "exec", "--nv"] and cmd[-6:] == AGENT


def test_srun_then_container_then_agent():
    argv = agent_argv(RUN, "python3", "srun", loads_workflow(
        WORKFLOW.replace("IMAGE", "/sw/ray.sif").replace("RUNTIME", "runtime: apptainer"),
        "d.yaml").allocation.container.model_copy(update={"gpu_vendor": "amd"}), WF)
    cmd = get_launcher("srun").command(LaunchRequest(hosts=("n1", "n2"), argv=argv,
                                                     gpus_per_node=8))
    at = cmd.index("apptainer")
    assert cmd[0] == "srun" and "--gpus-per-node=8" in cmd[:at]
    assert cmd[at:at + 3] == ["apptainer", "exec", "--rocm"]
    assert cmd[-6:] == ["python3", "-m", "hpcray", "node", "--run-dir", RUN]


def test_without_a_container_the_script_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = loads_workflow("name: demo\nallocation: {account: A}\n", "d.yaml")
    assert "node agents" not in api.script(wf, "frontier", run_dir=RUN)
