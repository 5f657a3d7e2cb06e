"""`container:` blocks in a workflow file: where they are allowed, and the errors a user sees
before anything is submitted (a missing image, no runtime), naming the file, line and field."""

from __future__ import annotations

import json

import pytest

from hpcray import api
from hpcray.errors import SpecError
from hpcray.spec import load_workflow, loads_workflow


def test_container_on_a_function_stage_is_refused():
    with pytest.raises(SpecError, match="'container' runs an executable") as err:
        loads_workflow("name: w\nstages:\n  - name: s\n    function: m:f\n"
                       "    container: {image: a.sif}\n", "w.yaml")
    assert err.value.field == "stages.0" and err.value.line == 3


def test_unknown_runtime_and_keys_name_the_field():
    with pytest.raises(SpecError) as err:
        loads_workflow("name: w\nallocation:\n  container: {image: a, runtime: docker}\n",
                       "w.yaml")
    assert err.value.field == "allocation.container.runtime"
    with pytest.raises(SpecError, match="unknown key 'mounts'"):
        loads_workflow("name: w\nallocation:\n  container: {image: a, mounts: [x]}\n", "w.yaml")


def test_bad_bind_and_env_are_refused():
    with pytest.raises(SpecError, match="host_path"):
        loads_workflow("name: w\nstages:\n  - name: s\n    command: [x]\n"
                       "    container: {image: a, binds: ['/a:/b:rx']}\n", "w.yaml")
    with pytest.raises(SpecError, match="not an environment variable name"):
        loads_workflow("name: w\nstages:\n  - name: s\n    command: [x]\n"
                       "    container: {image: a, env: {'A B': x}}\n", "w.yaml")


STAGES = """\
name: w
allocation: {account: A}
stages:
  - name: one
    command: [echo, one]
  - name: two
    command: [echo, two]
  - name: three
    command: [./sim]
    container:
      image: sim.sif
"""


def test_missing_image_fails_before_submission_naming_its_field(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(STAGES)
    with pytest.raises(SpecError) as err:
        api.submit(path, site="frontier", run_root=tmp_path / "runs")
    assert err.value.field == "stages.2.container.image"
    assert err.value.line == 11 and err.value.path == str(path)
    assert f"{tmp_path}/sim.sif does not exist" in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing was created, nothing submitted


def test_the_run_reads_resolved_containers(tmp_path):
    (tmp_path / "sim.sif").write_bytes(b"")
    path = tmp_path / "w.yaml"
    path.write_text(STAGES)
    run, _ = api.prepare(path, site="frontier", run_root=tmp_path / "runs")
    got = json.loads(run.resolved.read_text())["workflow"]["stages"][2]["container"]
    assert got["runtime"] == "apptainer" and got["gpu_vendor"] == "amd"
    assert got["image"] == str(tmp_path / "sim.sif")
    assert load_workflow(path).stages[2].container.runtime is None  # the file is untouched


def test_no_runtime_names_the_field_and_line(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nallocation:\n  account: A\n  container:\n    image: x.sif\n")
    site = tmp_path / "nort.yaml"
    site.write_text("scheduler: slurm\nlauncher: srun\ncpus_per_node: 4\n")
    with pytest.raises(SpecError, match="names no container_runtime") as err:
        api.script(path, site=str(site))
    assert err.value.field == "allocation.container.runtime" and err.value.line == 4
