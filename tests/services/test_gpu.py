"""vLLM on a GPU: checked on a GPU machine only; skipped here with the reason."""

from __future__ import annotations

import shutil

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _has_gpu(), reason="no NVIDIA GPU on this machine (vLLM is a CUDA build)")
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
