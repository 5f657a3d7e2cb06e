"""Held-out evaluation through the classification service, and the pipeline's plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcray.pipelines.cellpainting.data import Field


def classify_fields(handle, fields: list[Field], batch: int = 16) -> list[str]:
    labels: list[str] = []
    for i in range(0, len(fields), batch):
        chunk = fields[i:i + batch]
        payload = {"fields": [{"stack": str(f.files[0])} if f.stack
                              else {"files": [str(p) for p in f.files]} for f in chunk]}
        labels += handle.call("classify", payload).result["labels"]
    return labels


def confusion(truth: list[str], predicted: list[str], classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), int)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    from hpcray.metrics.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted dose (Gy)")
    ax.set_ylabel("true dose (Gy)")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(trials: list[dict[str, Any]], path: Path, metric: str) -> None:
    """Each trial's metric per epoch (ASHA's early stops show as short lines)."""
    from hpcray.metrics.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for t in trials:
        ax.plot(t["epochs"], t[metric], marker="o",
                label=f"{t['trial']}: lr {t['config']['lr']:.1e}, bs {t['config']['batch_size']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("Hyperparameter search (Optuna + ASHA)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
