"""The best model as a classification service: give it fields (their image files, as in the
metadata CSV), get the dose class and the class probabilities of each. It reads and
preprocesses with the same code as training, so a served prediction matches an offline one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcray.pipelines.cellpainting.data import Field, load_field
from hpcray.pipelines.cellpainting.preprocess import ChannelStats, center, prepare


class DoseClassifier:
    def __init__(self, model_dir: str, low: list[float], high: list[float], resize: int,
                 crop: int, threads: int = 1) -> None:
        import torch
        from transformers import ViTForImageClassification

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = ViTForImageClassification.from_pretrained(model_dir).eval().to(self.device)
        self.labels = [self.model.config.id2label[i]
                       for i in range(self.model.config.num_labels)]
        self.stats = ChannelStats(tuple(low), tuple(high))
        self.resize, self.crop = resize, crop

    def classify(self, payload: dict[str, Any]) -> dict[str, Any]:
        """payload: {"fields": [{"files": [DNA, ER, RNA, AGP, Mito paths]} or {"stack": path}]}"""
        import torch

        from hpcray.pipelines.cellpainting.model import forward

        fields = payload.get("fields") if isinstance(payload, dict) else None
        if not fields:
            raise ValueError("payload must be {'fields': [{'files': [5 paths]} | "
                             "{'stack': path}, ...]}")
        xs = []
        for i, item in enumerate(fields):
            stack = "stack" in item
            files = (item["stack"],) if stack else tuple(item.get("files") or ())
            if not stack and len(files) != 5:
                raise ValueError(f"field {i}: 'files' needs 5 paths (DNA, ER, RNA, AGP, Mito)")
            field = Field(row=i, plate="", well="", site="", dose=None, time_point=None,
                          files=tuple(Path(f) for f in files), stack=stack)
            xs.append(center(prepare(load_field(field), self.stats, self.resize), self.crop))
        with torch.no_grad():
            x = torch.from_numpy(np.stack(xs)).to(self.device)
            probs = torch.softmax(forward(self.model, x), -1).cpu()
        return {"labels": [self.labels[int(i)] for i in probs.argmax(-1)],
                "probabilities": probs.numpy().round(4).tolist(), "classes": self.labels}
