"""The other jobs of a run, rendered exactly: a relay's successor (held by the scheduler's
dependency on the job it follows, `hpcray up --job r1`, its output in jobs/r1/) and a
worker job of a grow (1 node, its own walltime, `--job w1`), for Slurm, PBS, LSF, Flux and
the local site. Compared whole against golden files (UPDATE_GOLDEN=1 rewrites them): PBS,
LSF and Flux cannot run here, so what they would be given is pinned down to the byte."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from hpcray import api
from hpcray.bootstrap.jobs import request_for
from hpcray.rundir import RunDir
from hpcray.schedulers import get_scheduler
from hpcray.sites import load_site
from hpcray.spec import loads_workflow

GOLDEN = Path(__file__).parent / "golden" / "chain"
RUN_DIR = "/scratch/proj/hpcray-runs/demo-20261126-120000-abcd"
PREVIOUS = {"slurm": "4200117", "pbs": "8123456.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
            "lsf": "776655", "flux": "fA9xQmZ3Pt1", "local": "local-31337"}

WORKFLOW = """\
name: demo
allocation:
  nodes: 2
  walltime: 01:30:00
  account: BIO123
  walltime_warning: 300
  setup: ["source /opt/envs/lucid/bin/activate"]
  python: /opt/envs/lucid/bin/python
  relay: {max_jobs: 3}
"""

SITES = {"frontier": "slurm", "polaris": "pbs", "lassen": "lsf", "tuolumne": "flux",
         "local": "local"}


def submitted_run(tmp_path: Path, site: str) -> RunDir:
    """A run directory with what submit writes (resolved.json), its request for the
    scheduler's real paths (RUN_DIR): the rendering reads only that."""
    profile = load_site(site)
    text = WORKFLOW if profile.requires_account else WORKFLOW.replace("  account: BIO123\n", "")
    if profile.gpu_account_required:
        text = text.replace("account: BIO123", f"account: BIO123{profile.gpu_account_suffix}")
    wf = loads_workflow(text, "demo.yaml")
    request = api.job_request(wf, profile, Path(RUN_DIR))
    run = RunDir(tmp_path / "demo").create()
    run.resolved.write_text(json.dumps({
        "workflow": wf.model_dump(mode="json"), "site": profile.model_dump(mode="json"),
        "request": {**dataclasses.asdict(request), "workflow_dir": "/scratch/proj"}}))
    return run


def rendered(tmp_path: Path, site: str, tag: str) -> str:
    run = submitted_run(tmp_path, site)
    scheduler = get_scheduler(SITES[site])
    if tag == "r1":
        request = request_for(run, tag, after_job=PREVIOUS[SITES[site]])
    else:
        request = request_for(run, tag, nodes=1, walltime=1800)
    # the job's own directory lives in the run directory, wherever this test made it
    return scheduler.job_script(request).replace(str(run.path), RUN_DIR)


@pytest.mark.parametrize("tag", ["r1", "w1"])
@pytest.mark.parametrize("site", sorted(SITES))
def test_chained_job_script_matches_golden(tmp_path, site, tag):
    text = rendered(tmp_path, site, tag)
    golden = GOLDEN / f"{site}-{tag}.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize("site", sorted(SITES))
def test_a_successor_differs_from_the_main_job_only_where_it_must(tmp_path, site):
    """Against the main job's script as submit renders it: the successor adds the
    dependency, names itself -r1, writes its output in jobs/r1/ and tells `hpcray up` which
    job it is; nothing else changes (same nodes, walltime, account, signal, setup)."""
    run = submitted_run(tmp_path, site)
    scheduler = get_scheduler(SITES[site])
    main = scheduler.job_script(request_for(run, "main")).replace(str(run.path), RUN_DIR)
    successor = rendered(tmp_path, site, "r1")
    removed = [ln for ln in main.splitlines() if ln not in successor.splitlines()]
    added = [ln for ln in successor.splitlines() if ln not in main.splitlines()]
    dependency = f"{scheduler.directive_prefix} {scheduler.dependency(PREVIOUS[SITES[site]])}"
    assert dependency in added
    assert added[-1] == f"exec /opt/envs/lucid/bin/python -m hpcray up --run-dir {RUN_DIR} " \
                        "--job r1"
    assert all("demo" in ln or "job.out" in ln or ln in (dependency, added[-1])
               for ln in added), added
    assert len(removed) == len(added) - 1, (removed, added)  # one line more: the dependency
