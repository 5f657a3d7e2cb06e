"""`hpcray.context()`: what a process knows of its run, from the environment every process of
a run inherits, through the public API."""

from __future__ import annotations

import pytest

import hpcray
from hpcray import api, env
from hpcray.spec import loads_workflow

WORKFLOW = """name: ctx
allocation: {nodes: 1, walltime: 10m}
services:
  - {name: echo, deployment: noop}
"""


def test_outside_a_run_everything_is_empty(monkeypatch):
    monkeypatch.delenv(env.RUN_DIR, raising=False)
    monkeypatch.delenv(env.RAY_MARKER, raising=False)
    ctx = hpcray.context()
    assert ctx.run_dir is None and ctx.node is None and ctx.site is None
    assert ctx.services == []
    ctx.progress("work", 1, 2)  # outside a run: nothing, and no error


@pytest.mark.parametrize("marker, node", [("abc123/node-1", "node-1"), ("", None)])
def test_a_process_of_a_run_sees_its_run_node_site_and_services(tmp_path, monkeypatch,
                                                                marker, node):
    run, site = api.prepare(loads_workflow(WORKFLOW), "local", run_root=tmp_path)
    monkeypatch.setenv(env.RUN_DIR, str(run.path))
    monkeypatch.setenv(env.RAY_MARKER, marker)
    ctx = hpcray.context()
    assert ctx.run_dir == run.path and ctx.node == node
    assert ctx.site is not None and ctx.site.name == site.name
    assert ctx.workflow is not None and ctx.workflow.name == "ctx"
    assert ctx.services == ["echo"]
    hpcray.progress("epochs", 3, 10, "training")
    ctx.progress("trials", 1, 4)
    from hpcray.metrics import progress

    got = {e["task"]: (e["done"], e["total"]) for e in progress.read(run.path)}
    assert got == {"epochs": (3, 10), "trials": (1, 4)}


def test_a_run_dir_not_made_by_submit_still_gives_the_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(env.RUN_DIR, str(tmp_path))
    ctx = hpcray.context()
    assert ctx.run_dir == tmp_path and ctx.workflow is None and ctx.site is None
