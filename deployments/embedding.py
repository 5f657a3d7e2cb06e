"""Sentence embeddings from a local encoder checkpoint (BERT-style), mean-pooled."""

from __future__ import annotations

from typing import Any


class Embedding:
    def __init__(self, model_path: str, device: str = "auto", normalize: bool = True) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_path, local_files_only=True).to(device)
        self.model.eval()
        self.normalize = normalize

    def embed(self, payload: dict[str, Any]) -> dict[str, Any]:
        import torch

        texts = payload["texts"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a string or a list of strings")
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return {"embeddings": vectors.cpu().tolist(), "dim": int(vectors.shape[-1]),
                "tokens": int(batch["attention_mask"].sum())}
