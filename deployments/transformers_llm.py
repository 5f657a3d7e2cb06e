"""Causal LM from a local checkpoint directory with Hugging Face transformers, CPU or GPU.

The same code loads a real checkpoint (Llama, Mistral, ...) and the tiny test model: only
local files are read (`local_files_only=True`); nothing is fetched from a hub."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any


class PromptTooLong(ValueError):
    """The prompt does not fit the model's context: the caller's fault (HTTP 400)."""


class TransformersLLM:
    def __init__(self, model_path: str, device: str = "auto", max_new_tokens: int = 64,
                 dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, local_files_only=True, torch_dtype=dtype).to(device).eval()
        config = self.model.config
        self.context = int(getattr(config, "max_position_embeddings", None)
                           or getattr(config, "n_positions", 2048))
        self.max_new_tokens = max_new_tokens
        self.name = model_path

    # -- requests --------------------------------------------------------------------------
    def _params(self, payload: dict[str, Any]) -> dict[str, Any]:
        max_tokens = payload.get("max_tokens", self.max_new_tokens)
        temperature = payload.get("temperature", 0.0)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise TypeError("max_tokens must be a positive integer")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise TypeError("temperature must be a number >= 0")
        return {"max_new_tokens": max_tokens, "do_sample": temperature > 0,
                **({"temperature": float(temperature)} if temperature > 0 else {}),
                "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}

    def _encode(self, prompt: Any, max_new: int):
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a string")
        ids = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        n = ids["input_ids"].shape[1]
        if n + max_new > self.context:
            raise PromptTooLong(f"prompt has {n} tokens; with max_tokens={max_new} that exceeds "
                                f"the model's context of {self.context} tokens")
        return ids, n

    def _prompt_of(self, payload: dict[str, Any]) -> str:
        if "messages" in payload:
            messages = payload["messages"]
            if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                raise TypeError("messages must be a list of {role, content} objects")
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        if "prompt" not in payload:
            raise KeyError("prompt")
        return payload["prompt"]

    def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        import torch

        params = self._params(payload)
        ids, n = self._encode(self._prompt_of(payload), params["max_new_tokens"])
        with torch.no_grad():
            out = self.model.generate(**ids, **params)
        new = out[0, n:]
        return {"text": self.tokenizer.decode(new, skip_special_tokens=True),
                "prompt_tokens": n, "completion_tokens": int(new.shape[0]),
                "finish_reason": "length" if new.shape[0] >= params["max_new_tokens"] else "stop"}

    chat = generate

    def generate_stream(self, payload: dict[str, Any]) -> Iterator[str]:
        """Text pieces as the model produces them."""
        from transformers import TextIteratorStreamer

        params = self._params(payload)
        ids, _ = self._encode(self._prompt_of(payload), params["max_new_tokens"])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True)
        worker = threading.Thread(target=self.model.generate,
                                  kwargs={**ids, **params, "streamer": streamer}, daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()

    chat_stream = generate_stream
