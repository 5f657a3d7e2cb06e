"""Figures of the signature pipeline: dose-response curves of the top hits and a heatmap of
gene sets by dose."""

from __future__ import annotations

import math
from pathlib import Path

from hpcray.metrics.plotting import pyplot
from hpcray.pipelines.signature.dose import DoseResponse
from hpcray.pipelines.signature.samples import Sample


def _burden(per_sample: dict[str, int], totals: dict[str, int], sample: str) -> float:
    return per_sample.get(sample, 0) / max(1, totals[sample]) * 1000


def dose_curves(path: Path, rows: list[DoseResponse], features: dict[str, dict[str, int]],
                samples: list[Sample], totals: dict[str, int], top: int = 6) -> Path:
    plt = pyplot()
    top_rows = rows[:top]
    cols = min(3, max(1, len(top_rows)))
    nrows = max(1, math.ceil(len(top_rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    dmax = max(s.dose for s in samples) or 1.0
    for ax, row in zip(axes.flat, top_rows, strict=False):
        per = features.get(row.feature, {})
        times = sorted({s.time for s in samples})
        for t in times:
            at = [s for s in samples if s.time == t and s.name in totals]
            ax.scatter([s.dose for s in at], [_burden(per, totals, s.name) for s in at],
                       s=18, label=f"{t:g} h")
        base = [_burden(per, totals, s.name) for s in samples if s.dose == 0 and s.name in totals]
        start = sum(base) / len(base) if base else 0.0
        xs = [dmax * i / 40 for i in range(41)]
        ax.plot(xs, [start * math.exp(row.slope * x) for x in xs], color="black", lw=1,
                label=f"x{row.rate_ratio:.3g}/Gy")
        ax.set_title(f"{row.feature[:32]}\nFDR {row.fdr:.2g}", fontsize=8)
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("per 1000 background variants")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(top_rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap(path: Path, rows: list[DoseResponse], features: dict[str, dict[str, int]],
            samples: list[Sample], totals: dict[str, int], top: int = 20) -> Path:
    """log2 of each gene set's burden at each dose over its burden at the lowest dose."""
    plt = pyplot()
    chosen = [r for r in rows if r.level == "gene_set"][:top]
    doses = sorted({s.dose for s in samples if s.name in totals})
    matrix = []
    for row in chosen:
        per = features.get(row.feature, {})
        rates = []
        for d in doses:
            at = [s.name for s in samples if s.dose == d and s.name in totals]
            exposure = max(1, sum(totals[s] for s in at))
            rates.append((sum(per.get(s, 0) for s in at) + 0.5) / exposure)
        matrix.append([math.log2(r / rates[0]) for r in rates])
    fig, ax = plt.subplots(figsize=(1.2 * len(doses) + 4, 0.32 * max(1, len(chosen)) + 1.5))
    if matrix:
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-3, vmax=3, aspect="auto")
        fig.colorbar(image, ax=ax, label="log2 burden vs lowest dose")
    ax.set_xticks(range(len(doses)), [f"{d:g}" for d in doses])
    ax.set_yticks(range(len(chosen)), [f"{r.feature[:40]} (FDR {r.fdr:.1g})" for r in chosen],
                  fontsize=7)
    ax.set_xlabel("dose (Gy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
