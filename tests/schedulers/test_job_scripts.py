"""Rendered job scripts compared exactly against golden files (UPDATE_GOLDEN=1 rewrites them).

PBS, LSF and Flux cannot run here, so the text they would be given is pinned down exactly;
tests/integration/test_rendered_scripts.py then runs the same script bodies locally."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from hpcray import api
from hpcray.spec import loads_workflow

GOLDEN = Path(__file__).parent / "golden"
RUN_DIR = Path("/scratch/proj/hpcray-runs/demo-20261126-120000-abcd")

WORKFLOW = """\
name: demo
allocation:
  nodes: 2
  walltime: 01:30:00
  account: BIO123
  walltime_warning: 300
  directives: ["--mail-type=END"]
  setup: ["source /opt/envs/lucid/bin/activate"]
  env: {OMP_NUM_THREADS: "4", GREETING: "it's a \\"test\\" $HOME"}
  python: /opt/envs/lucid/bin/python
"""

SITE_DIRECTIVES = {"slurm": "--mail-type=END", "pbs": "-m e", "lsf": "-B", "flux": "--urgency=8",
                   "local": None}
SITES = ["frontier", "perlmutter", "delta", "polaris", "aurora", "lassen", "tuolumne", "local"]


def render(site: str) -> str:
    from hpcray.sites import load_site

    profile = load_site(site)
    text = WORKFLOW
    directive = SITE_DIRECTIVES[profile.scheduler]
    text = text.replace('"--mail-type=END"', f'"{directive}"') if directive else text.replace(
        '  directives: ["--mail-type=END"]\n', "")
    if not profile.requires_account:
        text = text.replace("  account: BIO123\n", "")
    elif profile.gpu_account_required:
        text = text.replace("account: BIO123", f"account: BIO123{profile.gpu_account_suffix}")
    wf = loads_workflow(text, "demo.yaml")
    return api.script(wf, profile, run_dir=RUN_DIR)


@pytest.mark.parametrize("site", SITES)
def test_job_script_matches_golden(site):
    text = render(site)
    golden = GOLDEN / f"{site}.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("site", SITES)
def test_job_script_is_valid_bash(site):
    subprocess.run(["bash", "-n"], input=render(site), text=True, check=True)


def test_env_values_are_quoted_against_injection():
    text = render("frontier")
    line = next(ln for ln in text.splitlines() if ln.startswith("export GREETING="))
    # bash must read back the exact value, with no expansion of $HOME or the quotes
    out = subprocess.run(["bash", "-c", f"{line}; printf %s \"$GREETING\""],
                         capture_output=True, text=True, check=True).stdout
    assert out == 'it\'s a "test" $HOME'
    assert shlex.split(line.split("=", 1)[1]) == ['it\'s a "test" $HOME']


def test_slurm_asks_for_walltime_warning_signal():
    text = render("frontier")
    assert "#SBATCH --signal=B:USR2@300" in text
    last = text.rstrip().splitlines()[-1]
    assert last == f"exec /opt/envs/lucid/bin/python -m hpcray up --run-dir {RUN_DIR}"


def test_lsf_and_flux_warning_signals():
    assert "#BSUB -wa USR2" in render("lassen") and "#BSUB -wt 0:05" in render("lassen")
    assert "# flux: --signal=SIGUSR2@300s" in render("tuolumne")


def test_no_secret_in_script():
    for site in SITES:
        text = render(site)
        assert "RAY_AUTH" not in text and "token" not in text.lower()
