"""Impossible requests fail before anything is written or submitted."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from hpcray import api
from hpcray.errors import ResourceError, SpecError
from hpcray.spec import loads_workflow


def wf(alloc: str):
    return loads_workflow(f"name: x\nallocation:\n{alloc}", "x.yaml")


@pytest.mark.parametrize("alloc,site,message", [
    ("  gpus_per_node: 9\n  account: A\n", "frontier",
     "allocation.gpus_per_node: 9 GPU(s) per node, but site 'frontier' has 8"),
    ("  cpus_per_node: 65\n  account: A\n", "perlmutter", "allocation.cpus_per_node: 65 CPUs"),
    ("  walltime: 25:00:00\n  account: A\n", "frontier",
     "allocation.walltime: no queue hpcray chooses on site 'frontier' takes 1 node for 25:00:00"),
    ("  nodes: 1\n", "polaris", "allocation.account: site 'polaris' requires the project"),
    ("  gpus_per_node: 1\n", "local", "has 0 per node"),
])
def test_impossible_requests(alloc, site, message, tmp_path):
    with pytest.raises(ResourceError, match=re.escape(message)):
        api.submit(wf(alloc), site, run_root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written, nothing submitted


def test_unknown_site_before_submission(tmp_path):
    with pytest.raises(SpecError, match="unknown site"):
        api.submit(wf("  nodes: 1\n"), "nowhere", run_root=tmp_path)


def test_run_root_with_space_is_refused(tmp_path):
    with pytest.raises(SpecError, match="run directory"):
        api.script(wf("  nodes: 1\n"), "local", run_root=Path(tmp_path) / "my runs")


@pytest.mark.skipif(any(Path("/dev").glob("nvidia[0-9]*")), reason="this machine has GPU "
                    "device files: they are counted first")
def test_local_gpus_from_nvidia_smi_where_dev_lists_none(tmp_path, monkeypatch):
    """Some virtual machines show the GPU to nvidia-smi but have no /dev/nvidiaN. No GPU
    driver can run here: a stand-in prints what `nvidia-smi -L` printed on an H100 machine."""
    from hpcray.sites import load_site

    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\n[ "$1" = -L ] || exit 2\n'
                   'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-4f1fe879-9730)"\n'
                   'echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5a2be879-9731)"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    local = load_site("local")
    assert api.site_gpus(local) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what the process may use wins
    assert api.site_gpus(local) == 1
    smi.write_text("#!/bin/sh\nexit 9\n")  # a broken driver: no GPU, no error
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert api.site_gpus(local) == 0
