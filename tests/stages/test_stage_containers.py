"""A stage executable run for real inside a container image built on this machine (this
machine's Python as an image directory, tests/fixtures/containers.py): with charliecloud as
the directory, with podman as an imported local image. The task writes into the run
directory, from the workflow's directory, with the task's variables, and sees the image's
filesystem, not the host's."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path

import pytest

import hpcray
from hpcray.stages.records import read_attempts
from tests.conftest import FIXTURES, ONE_NODE, run_beside
from tests.fixtures.containers import add_mount_points

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
RUNS = Path("/var/tmp/hpcray-container-runs")

# What the task reports: run inside the image (no host venv there), where it ran from, what
# it was told. It writes into the run directory, which is bound into the image.
PROGRAM = ("import json, os, sys; "
           "out = os.path.join(os.environ['HPCRAY_RUN_DIR'], 'ctr-{index}.json'); "
           "json.dump({'item': '{item}', 'cwd': os.getcwd(), 'stage': os.environ['HPCRAY_STAGE'], "
           "'host_venv': os.path.exists(sys.argv[1]), 'greeting': os.environ.get('GREETING'), "
           "'marker': os.environ.get('HPCRAY_RAY_OF')}, open(out, 'w')); print('wrote', out)")


@pytest.mark.parametrize("runtime", ["charliecloud", "podman"])
def test_a_stage_executable_runs_in_an_image_and_writes_the_run_dir(
        runtime, request, tmp_path, run_root, monkeypatch):
    venv = str(Path(sys.executable).parent.parent)
    binds = "[]"
    if runtime == "charliecloud":
        ch = request.getfixturevalue("charliecloud")
        for key, value in ch.env.items():
            monkeypatch.setenv(key, value)
        # ch-run mounts the image read-only: a bind needs its mount point there. The run
        # directory goes under one directory bound as a whole (ch-run's /tmp is the job's
        # TMPDIR, not the host's /tmp, so tmp_path is not visible inside)
        run_root = RUNS / uuid.uuid4().hex[:8]
        add_mount_points(ch.image, [FIXTURES / "stages", RUNS])
        binds = f"[{RUNS}]"
        image = str(ch.image)
    else:
        pod = request.getfixturevalue("podman")
        for key, value in pod.env.items():
            monkeypatch.setenv(key, value)
        image = pod.image
    body = f"""\
stages:
  - name: inside
    command: [python3, -c, {json.dumps(PROGRAM)}, {venv}]
    each: {{items: [a, b]}}
    resources: {{cpus: 0.1}}
    container:
      runtime: {runtime}
      image: {image}
      env: {{GREETING: "it's $HOME"}}
      binds: {binds}
"""
    try:
        sub, st = run_beside("stages", tmp_path.name, f"name: ctr\n{ONE_NODE}{body}",
                             run_root)
        check(sub.run_dir, st)
    finally:
        if runtime == "charliecloud":
            shutil.rmtree(run_root, ignore_errors=True)


def check(run: Path, st) -> None:
    assert st.state == "completed", hpcray.logs(run)
    got = sorted((json.loads((run / f"ctr-{i}.json").read_text()) for i in (0, 1)),
                 key=lambda r: r["item"])
    assert [r["item"] for r in got] == ["a", "b"]
    for record in got:
        assert record["cwd"] == str(FIXTURES / "stages")  # the workflow's directory
        assert record["stage"] == "inside" and record["greeting"] == "it's $HOME"
        assert not record["host_venv"]  # the image's filesystem, not the host's
        assert record["marker"] and record["marker"].startswith("hpcray-local-")
    attempts = read_attempts(run)
    assert len(attempts) == 2 and all(a["state"] == "done" for a in attempts)
    assert all(a["command"][0] == "python3" for a in attempts)  # the user's command
