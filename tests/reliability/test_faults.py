"""Faults injected into real runs; each counts what was lost (nothing may be) and checks
that no process of the run is left. More fault tests live beside what they break: a replica
SIGKILLed under load (tests/services/test_live_run.py and direct/), a remote link cut
(tests/remote/test_federation.py), cancel, walltime signal and unreachable nodes on Slurm
(tests/slurm), lost nodes (tests/integration). All carry the `faults` marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

import hpcray
from tests.conftest import (
    ONE_NODE,
    assert_nothing_left_of,
    run_beside,
    submit_beside,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(300)]


def test_a_killed_driver_fails_the_run_naming_the_signal(tmp_path, run_root):
    sub = submit_beside("remote", f"killdrv-{tmp_path.name}",
                        f"name: killdrv\n{ONE_NODE}"
                        "driver:\n  function: drive_remote:serve_until_told\n", run_root)
    assert wait_until(lambda: "driver_pid" in json.loads((sub.run_dir / "run.json")
                                                          .read_text()), 120)
    os.kill(json.loads((sub.run_dir / "run.json").read_text())["driver_pid"], signal.SIGKILL)
    st = hpcray.wait(sub.run_dir, timeout=120)
    assert st.state == "failed" and st.error.startswith("driver killed by SIGKILL"), st.error
    assert_nothing_left_of(sub.run_dir)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs for the run directories."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_corrupts_no_run_file(tmp_path, small_disk):
    sub, st = run_beside("remote", f"disk-{tmp_path.name}",
                         f"name: disk\n{ONE_NODE}"
                         "driver:\n  function: drive_remote:fill_disk\n  args: {megabytes: 8}\n",
                         small_disk)
    assert st.state == "failed"
    assert "No space left on device" in st.error, st.error
    for path in sub.run_dir.rglob("*.json"):  # every state file still reads as JSON
        json.loads(path.read_text())
