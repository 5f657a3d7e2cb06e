"""Impossible requests fail before anything is written or submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcray import api
from hpcray.errors import ResourceError, SpecError
from hpcray.spec import loads_workflow


def wf(alloc: str):
    return loads_workflow(f"name: x\nallocation:\n{alloc}", "x.yaml")


@pytest.mark.parametrize("alloc,site,message", [
    ("  gpus_per_node: 9\n  account: A\n", "frontier", "gpus_per_node=9 but site 'frontier' has 8"),
    ("  cpus_per_node: 65\n  account: A\n", "perlmutter", "cpus_per_node=65"),
    ("  walltime: 25:00:00\n  account: A\n", "frontier",
     "walltime=25:00:00 exceeds the limit of site 'frontier'"),
    ("  nodes: 1\n", "polaris", "requires allocation.account"),
    ("  gpus_per_node: 1\n", "local", "has 0 GPU"),
])
def test_impossible_requests(alloc, site, message, tmp_path):
    with pytest.raises(ResourceError, match=message.replace("(", r"\(")):
        api.submit(wf(alloc), site, run_root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written, nothing submitted


def test_unknown_site_before_submission(tmp_path):
    with pytest.raises(SpecError, match="unknown site"):
        api.submit(wf("  nodes: 1\n"), "nowhere", run_root=tmp_path)


def test_run_root_with_space_is_refused(tmp_path):
    with pytest.raises(SpecError, match="run directory"):
        api.script(wf("  nodes: 1\n"), "local", run_root=Path(tmp_path) / "my runs")
