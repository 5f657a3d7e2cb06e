"""PBS, LSF and Flux cannot run here. Their rendered job scripts are pinned by golden files;
here the same script bodies run under bash on this machine, with each scheduler's job
environment recorded the way the batch system sets it (PBS_NODEFILE, LSB_MCPU_HOSTS, a
`flux` command that answers `flux resource list`), and the local launcher in place of
mpiexec/jsrun/flux run (HPCRAY_LAUNCHER=local). That proves the script body, the environment
parsing, plan, bring-up, driver and teardown; it does not prove the real qsub/bsub/flux
commands or their launchers, which only a site can."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from hpcray import api
from hpcray.rundir import read_json
from hpcray.sites.profile import SiteProfile
from hpcray.spec import loads_workflow
from tests.conftest import REPO, ray_processes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HOST = socket.gethostname()
WORKFLOW = f"""\
name: rendered
allocation: {{nodes: 1, walltime: 10m}}
ray: {{object_store_memory: 100000000, teardown_grace: 5}}
driver:
  function: hello_cluster:main
  args: {{tasks_per_node: 1}}
  cwd: {REPO / "examples"}
"""


def site(scheduler: str, launcher: str) -> SiteProfile:
    return SiteProfile(name=f"{scheduler}-here", scheduler=scheduler, launcher=launcher,
                       cpus_per_node=2, gpus_per_node=0, network_interface="lo",
                       walltime_signal=scheduler != "pbs")


def job_env(scheduler: str, tmp_path: Path) -> dict[str, str]:
    if scheduler == "pbs":
        nodefile = tmp_path / "nodefile"
        nodefile.write_text(f"{HOST}\n{HOST}\n")
        return {"PBS_JOBID": "4242.pbs01.example", "PBS_NODEFILE": str(nodefile), "NCPUS": "2"}
    if scheduler == "lsf":
        return {"LSB_JOBID": "4343", "LSB_MCPU_HOSTS": f"batch1 1 {HOST} 2"}
    # flux: the job's resource list comes from the `flux` command
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "flux"
    shim.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'resource list' ] && "
                    f"echo '      1        2        0 {HOST}'\n")
    shim.chmod(0o755)
    return {"FLUX_JOB_ID": "f2bHNxE7Hm", "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def run_script(run_dir: Path, env: dict[str, str], timeout: float) -> int:
    """Run the job script as the batch system would; kill it if it outlives the timeout."""
    full = {**os.environ, **env, "HPCRAY_LAUNCHER": "local"}
    with open(run_dir / "job.out", "ab") as out:
        proc = subprocess.Popen(["bash", str(run_dir / "job.sh")], env=full, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait()


@pytest.mark.parametrize("scheduler,launcher", [("pbs", "mpiexec"), ("lsf", "jsrun"),
                                                ("flux", "flux")])
def test_script_body_runs_with_scheduler_environment(scheduler, launcher, tmp_path):
    run, _ = api.prepare(loads_workflow(WORKFLOW), site(scheduler, launcher),
                         run_root=tmp_path / "runs")
    code = run_script(run.path, job_env(scheduler, tmp_path), timeout=180)
    assert code == 0, (run.path / "job.out").read_text()
    data = run.read()
    assert data["state"] == "completed"
    assert data["job_id"] == {"pbs": "4242.pbs01.example", "lsf": "4343",
                              "flux": "f2bHNxE7Hm"}[scheduler]
    result = json.loads((run.path / "driver-result.json").read_text())
    assert list(result["nodes"]) == [HOST]
    assert wait_until(lambda: not ray_processes(data["cluster_id"]), 15)


def test_pbs_walltime_timer_drains_and_tears_down(tmp_path):
    """PBS Pro sends no warning signal: hpcray's own timer stops the run before the limit."""
    text = ("name: walltimed\nallocation: {nodes: 1, walltime: 60s, walltime_warning: 40}\n"
            "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
            "driver: {command: [sleep, '300']}\n")
    run, _ = api.prepare(loads_workflow(text), site("pbs", "mpiexec"),
                         run_root=tmp_path / "runs")
    code = run_script(run.path, job_env("pbs", tmp_path), timeout=120)
    assert code == 0, (run.path / "job.out").read_text()
    data = read_json(run.run_json)
    assert data["state"] == "walltime"
    started = data["times"]["job_started"]
    # the timer fires at walltime - warning = 20 s; how soon teardown starts after that
    # depends on the machine's load, so the bound is the claim: before the 60 s limit
    assert 15 <= data["times"]["teardown_start"] - started < 60
    assert data["driver_exit_code"] != 0  # the driver was stopped, not left running
    assert wait_until(lambda: not ray_processes(data["cluster_id"]), 15)
