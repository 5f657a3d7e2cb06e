"""The CLI is thin: each command maps to one API call; errors are one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from hpcray.cli import main
from tests.conftest import REPO


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_script_prints_the_job_script(tmp_path):
    result = run("script", str(REPO / "examples" / "quickstart.yaml"), "--site", "frontier",
                 "--run-dir", str(tmp_path / "r"))
    # frontier requires an account: a clear one-line error before anything is submitted
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    # (no account in the file: the error points at its allocation section)
    assert "quickstart.yaml:4: allocation.account: site 'frontier' requires the project" \
        in result.output


def test_script_for_local(tmp_path):
    result = run("script", str(REPO / "examples" / "quickstart.yaml"), "--run-dir",
                 str(tmp_path / "r"))
    assert result.exit_code == 0
    assert result.output.startswith("#!/bin/bash\n")
    assert f"-m hpcray up --run-dir {tmp_path / 'r'}" in result.output


def test_malformed_workflow_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nallocation:\n  nodes: two\n")
    result = run("submit", str(bad), "--run-root", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"hpcray: error: {bad}:3: allocation.nodes: Input should be a valid integer, unable to "
        "parse string as an integer (got 'two')")
    assert not (tmp_path / "runs").exists()


def test_what_the_job_would_fail_on_is_refused_at_submit_with_its_line(tmp_path):
    """An unknown deployment and a driver module that is nowhere: one line each, exit 2,
    nothing submitted (they used to fail inside the job, after the queue wait)."""
    workflow = tmp_path / "wf.yaml"
    workflow.write_text("name: x\nservices:\n  - {name: m, deployment: nosuch}\n")
    result = run("submit", str(workflow), "--run-root", str(tmp_path / "runs"))
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert result.output.startswith(f"hpcray: error: {workflow}:3: services.0.deployment: "
                                    "unknown deployment 'nosuch'; built-in: ")
    workflow.write_text("name: x\ndriver: {function: nosuchmod:main}\n")
    result = run("validate", str(workflow))
    assert result.exit_code == 2
    assert result.output.startswith(f"hpcray: error: {workflow}:2: driver.function: cannot "
                                    "import 'nosuchmod' for 'nosuchmod:main'")
    assert not (tmp_path / "runs").exists()


def test_validate_and_sites():
    assert run("validate", str(REPO / "examples" / "quickstart.yaml")).exit_code == 0
    out = run("sites").output
    for name in ("frontier", "delta", "polaris", "perlmutter", "aurora", "local"):
        assert name in out
    queues = run("sites", "aurora").output
    assert "| debug-scaling | `-q debug-scaling` | 2-256 | 00:05:00 - 01:00:00 |" in queues
    assert run("sites", "nosuchsite").exit_code == 2


def test_a_workflow_no_queue_takes_fails_before_submission_naming_its_line(tmp_path):
    workflow = tmp_path / "big.yaml"
    workflow.write_text("name: big\nsite: aurora\nallocation:\n  nodes: 64\n"
                        "  walltime: 06:00:00\n  account: bio\n")
    result = run("submit", str(workflow), "--run-root", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert result.output.startswith(f"hpcray: error: {workflow}:5: allocation.walltime: no "
                                    "queue hpcray chooses on site 'aurora' takes 64 nodes")
    assert not (tmp_path / "runs").exists()


def test_status_of_unknown_run(tmp_path):
    result = run("status", "nope", "--run-root", str(tmp_path))
    assert result.exit_code == 2 and "no run 'nope'" in result.output


def test_console_entry_point_and_module():
    out = subprocess.run([sys.executable, "-m", "hpcray", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("script", "submit", "status", "cancel", "logs"):
        assert command in out


def test_logs_selectors_are_one_at_a_time_and_name_what_the_run_has(tmp_path):
    """`hpcray logs` is one api.logs call: one of --service/--stage/--driver/--ray (--node
    goes with --ray), and a name the run does not have is a one-line error naming those it
    has. (Their contents from real runs: tests/pipelines/cellpainting.)"""
    from hpcray.rundir import RunDir

    rd = RunDir(tmp_path / "r1").create()
    rd.update(run_id="r1", node_names=["n1"])
    (rd.logs / "driver.log").write_text("mine\n(ServeController pid=7) INFO x\n")
    stage = rd.path / "stages" / "prep"
    stage.mkdir(parents=True)
    (stage / "0.0.out").write_text("task 0 said hello\n")
    for args, error in (
            (["--service", "a", "--driver"], "choose one of service, stage, driver, ray "
                                             "(given: service, driver)"),
            (["--node", "n1", "--driver"], "node goes with ray only, not with driver"),
            (["--service", "nosuch"], "no service 'nosuch' in this run; services: none"),
            (["--stage", "other"], "no stage 'other' in this run; stages: prep"),
            (["--node", "n9", "--ray"], "no node 'n9' in this run; nodes: n1")):
        result = run("logs", str(rd.path), *args)
        assert result.exit_code == 2 and result.output == f"hpcray: error: logs: {error}\n"
    assert run("logs", str(rd.path), "--driver").output == (rd.logs / "driver.log").read_text()
    assert "task 0 said hello" in run("logs", str(rd.path), "--stage", "prep").output
    held = run("logs", str(rd.path), "--ray").output
    assert "(ServeController pid=7) INFO x" in held and "mine" not in held
    assert "logs/ray/n1: none kept" in held
