"""Cell painting on a GPU: concurrent Tune trials share it, and the served classifier uses
it. Checked on the lent GPU (benchmarks/gpu_check.sh); skipped here with the reason."""

from __future__ import annotations

import json

import pytest

import hpcray
from tests.conftest import needs_gpu, run_to_completion

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(600)]


@needs_gpu
def test_two_concurrent_trials_share_the_gpu(tmp_path):
    wf = tmp_path / "cp.yaml"
    wf.write_text(
        "name: cpgpu\nallocation: {nodes: 1, walltime: 20m}\n"
        "ray: {object_store_memory: 300000000, teardown_grace: 5}\n"
        "driver:\n  function: hpcray.pipelines.cellpainting:run\n  args:\n"
        "    data: {synthetic: {fields_per_dose: 24, size: 96}}\n"
        "    model: {resize: 64, crop: 48}\n"
        "    search: {trials: 2, concurrent: 2, epochs: 2, samples_per_epoch: 512,\n"
        "             trial: {cpus: 1, gpus: auto}}\n"
        "    preprocess: {workers: 2, cpus: 0.5}\n"
        "    service: {cpus: 0.5, gpus: 0.25}\n")
    sub, _ = run_to_completion(wf, tmp_path / "runs", timeout=540)
    summary = json.loads((sub.run_dir / "cellpainting" / "summary.json").read_text())
    assert summary["failed_trials"] == 0 and len(summary["trials"]) == 2
    assert {t["device"] for t in summary["trials"]} == {"cuda"}, summary["trials"]
    # every held-out field classified by the served model (an accuracy in [0, 1] proves nothing)
    assert sum(map(sum, summary["confusion"])) == summary["split"][2] > 0
    assert "trials: 1 CPU and 0.5 GPU each, 2 at a time" in hpcray.logs(sub.run_dir)
