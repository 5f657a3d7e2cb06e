"""Services on a GPU: checked on a GPU machine only (benchmarks/gpu_check.sh); skipped here
with the reason."""

from __future__ import annotations

import json

import pytest

import hpcray
from tests.conftest import ONE_NODE, needs_gpu, run_beside

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]


@needs_gpu
def test_llm_replicas_an_encoder_and_a_stage_share_one_gpu(tmp_path, run_root):
    """Two LLM replicas (bf16), an encoder and a stage task, each with a share of one GPU:
    the run's node offers the GPU to Ray, and nvidia-smi shows every replica holding memory."""
    from hpcray.models.tiny import build_tiny_decoder, build_tiny_encoder

    llama = build_tiny_decoder(tmp_path / "llama", "llama", layers=8, dim=512)
    bert = build_tiny_encoder(tmp_path / "bert")
    probe = tmp_path / "probe.json"
    text = (f"name: gpu\n{ONE_NODE}services:\n"
            f"  - {{name: llm, deployment: transformers_llm, replicas: 2,\n"
            f"     resources: {{cpus: 1, gpus: 0.25}},\n"
            f"     args: {{model_path: '{llama}', dtype: bfloat16, max_new_tokens: 8}}}}\n"
            f"  - {{name: emb, deployment: embedding, resources: {{cpus: 1, gpus: 0.25}},\n"
            f"     args: {{model_path: '{bert}'}}}}\n"
            "stages:\n  - name: probe\n    function: gpu_checks:probe\n"
            f"    args: {{out: '{probe}'}}\n    resources: {{cpus: 1, gpus: 0.25}}\n"
            "driver: {function: 'gpu_checks:main'}\n")
    sub, st = run_beside("services", tmp_path.name, text, run_root, timeout=400)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    out = json.loads((sub.run_dir / "driver-result.json").read_text())
    assert out["cluster_gpus"] >= 1
    assert len(out["replicas"]) == 2 and out["completion_tokens"] == [6]
    assert out["embed_dim"] == 32 and out["embed_rows"] == 3
    held = {int(pid): mib for pid, mib in out["gpu_processes"].items()}
    assert len(out["llm_pids"]) == 2 and len(out["emb_pids"]) == 1
    for pid in out["llm_pids"] + out["emb_pids"]:
        assert pid in held, (pid, held)  # the replica's own process holds GPU memory
    used = json.loads(probe.read_text())
    assert used["cuda"] and used["gpu_ids"] and used["device"] == "cuda:0", used


@needs_gpu
def test_vllm_dummy_llama3_8b_shape_answers_through_the_handle(tmp_path):
    pytest.importorskip("vllm", reason="vLLM not installed (pip install 'hpcray[vllm]')")
    import ray
    from transformers import LlamaConfig

    from hpcray.models.tiny import build_tiny_causal_lm
    from hpcray.services import ServiceManager, service
    from hpcray.spec.services import ServiceSpec

    model = tmp_path / "llama3-8b-shape"
    build_tiny_causal_lm(model)  # tokenizer files; the config below replaces the tiny one
    LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                max_position_embeddings=8192, rope_theta=500000.0).save_pretrained(model)
    ray.init()
    manager = ServiceManager([ServiceSpec(
        name="llm", deployment="vllm_llm", resources={"cpus": 1, "gpus": 1},
        args={"model_path": str(model), "load_format": "dummy", "max_model_len": 2048},
        readiness_timeout=600)])
    try:
        manager.start()
        response = service("llm").generate("low dose radiation", max_tokens=8)
        assert response.result["completion_tokens"] == 8 and response.replica
    finally:
        manager.stop()
        ray.shutdown()
