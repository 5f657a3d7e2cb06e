"""The UQ pipeline on a GPU: tasks packed onto it by memory, LoRA and Laplace in bf16.
Checked on the lent GPU (benchmarks/gpu_check.sh); skipped here with the reason."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import needs_gpu, run_to_completion

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(600)]


@needs_gpu
def test_three_methods_two_seeds_packed_onto_one_gpu(tmp_path):
    wf = tmp_path / "uq.yaml"
    wf.write_text(
        "name: uqgpu\nallocation: {nodes: 1, walltime: 20m}\n"
        "ray: {object_store_memory: 200000000, teardown_grace: 5}\n"
        "driver:\n  function: hpcray.pipelines.uq:run\n  args:\n"
        "    models: [{name: llama, tiny: llama}]\n"
        "    seeds: [0, 1]\n    methods: [lora, ensemble, laplace]\n"
        "    gpu_memory_gb: 40\n"
        "    data: {synthetic_questions: 160}\n"
        "    training: {epochs: 3, ensemble: 2, samples: 4}\n")
    sub, _ = run_to_completion(wf, tmp_path / "runs", timeout=540)
    out = sub.run_dir / "uq"
    tasks = [json.loads(p.read_text()) for p in sorted((out / "tasks").glob("*.json"))]
    assert len(tasks) == 6
    for task in tasks:
        assert task["device"] == "cuda" and task["gpu_ids"], task["method"]
        assert task["peak_gpu_memory_gb"] > 0
        assert all(abs(sum(p) - 1) < 1e-3 for p in task["probs"])  # bf16 logits, fp32 softmax
    starts = sorted(t["started"] for t in tasks)
    ends = sorted(t["ended"] for t in tasks)
    assert starts[1] < ends[0]  # packed: a second task began before the first ended
    with (out / "uq_metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert float(row["accuracy"]) > 0.4, row
