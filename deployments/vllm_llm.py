"""LLM on GPUs with vLLM. vLLM is imported only when a replica starts (it is a CUDA build and
an optional extra: `pip install hpcray[vllm]`). `load_format="dummy"` builds the real
architecture from a config with random weights, so benchmarks need no weights.

Checked only on a GPU machine (tests marked `gpu`); see docs/services.md."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class VllmLLM:
    def __init__(self, model_path: str, load_format: str = "auto", tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, max_new_tokens: int = 64,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto") -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise RuntimeError("deployment vllm_llm needs vLLM on a GPU node: "
                               "pip install 'hpcray[vllm]'") from exc
        self._sampling = SamplingParams
        self.llm = LLM(model=model_path, load_format=load_format,
                       tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                       skip_tokenizer_init=False, enforce_eager=True)
        self.context = self.llm.llm_engine.model_config.max_model_len
        self.tokenizer = self.llm.get_tokenizer()
        self.max_new_tokens = max_new_tokens

    def _params(self, payload: dict[str, Any]):
        max_tokens = payload.get("max_tokens", self.max_new_tokens)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise TypeError("max_tokens must be a positive integer")
        return self._sampling(max_tokens=max_tokens,
                              temperature=float(payload.get("temperature", 0.0)))

    def _prompt(self, payload: dict[str, Any]) -> str:
        if "messages" in payload:
            return self.tokenizer.apply_chat_template(payload["messages"], tokenize=False,
                                                      add_generation_prompt=True)
        prompt = payload["prompt"]
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a string")
        return prompt

    def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        params = self._params(payload)
        prompt = self._prompt(payload)
        n = len(self.tokenizer(prompt)["input_ids"])
        if n + params.max_tokens > self.context:
            raise ValueError(f"prompt has {n} tokens; with max_tokens={params.max_tokens} that "
                             f"exceeds the model's context of {self.context} tokens")
        out = self.llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        return {"text": out.text, "prompt_tokens": n, "completion_tokens": len(out.token_ids),
                "finish_reason": out.finish_reason or "stop"}

    chat = generate

    def generate_stream(self, payload: dict[str, Any]) -> Iterator[str]:
        # The offline engine returns whole completions; stream them as one piece.
        yield self.generate(payload)["text"]

    chat_stream = generate_stream
