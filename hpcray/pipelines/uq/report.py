"""The UQ results as a table (CSV, Markdown) and plots: metrics per task, then per model and
method aggregated over seeds (mean and 95% confidence interval)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcray.metrics.plotting import pyplot
from hpcray.pipelines.uq.metrics import METRICS, Evaluation, evaluate, mean_ci, reliability_bins


def aggregate(results: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per model and method: each metric's mean and CI half-width over seeds."""
    rows = []
    models = sorted({r["model"] for r in results})
    for model in models:
        for method in methods:
            mine = [r for r in results if r["model"] == model and r["method"] == method]
            if not mine:
                continue
            row: dict[str, Any] = {"model": model, "method": method, "seeds": len(mine)}
            for metric in METRICS:
                mean, half = mean_ci([r["metrics"][metric] for r in mine])
                row[metric], row[f"{metric}_ci95"] = mean, half
            rows.append(row)
    return rows


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def write_report(results: list[dict[str, Any]], out: Path, methods: Sequence[str]
                 ) -> dict[str, Any]:
    for r in results:
        r["metrics"] = evaluate(Evaluation(r["probs"], r["answers"]))
    rows = aggregate(results, methods)
    columns = ["model", "method", "seeds"] + [c for m in METRICS for c in (m, f"{m}_ci95")]
    with (out / "uq_metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| model | method | seeds | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for row in rows:
        cells = [f"{_fmt(row[m])} ± {_fmt(row[m + '_ci95'])}" for m in METRICS]
        lines.append(f"| {row['model']} | {row['method']} | {row['seeds']} | "
                     + " | ".join(cells) + " |")
    (out / "uq_metrics.md").write_text(
        "Mean ± 95% CI over seeds. nll, ece, brier: lower is better; accuracy, auroc "
        "(confidence ranking right over wrong answers): higher is better.\n\n"
        + "\n".join(lines) + "\n")
    _plot_metrics(rows, out / "metrics_by_method.png")
    _plot_reliability(results, methods, out / "reliability.png")
    return {"rows": rows, "tasks": len(results),
            "files": ["uq_metrics.csv", "uq_metrics.md", "metrics_by_method.png",
                      "reliability.png"]}


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """The metrics table on the driver's output, so the run ends with its results on the
    console (as cell painting and signature detection do), not only in uq_metrics.md."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"UQ: {summary['tasks']} tasks in {summary['makespan_s']:.0f} s "
                        "(mean ± 95% CI over seeds)")
    for column in ("model", "method", "seeds", *METRICS):
        table.add_column(column, no_wrap=True)
    for row in summary["rows"]:
        table.add_row(row["model"], row["method"], str(row["seeds"]),
                      *(f"{_fmt(row[m])} ± {_fmt(row[m + '_ci95'])}" for m in METRICS))
    console = Console(width=120)
    console.print(table)
    console.print("nll, ece, brier: lower is better; accuracy, auroc: higher is better")
    console.print(f"Results: {out} ({', '.join(summary['files'])})", soft_wrap=True)


def _plot_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    models = sorted({r["model"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    width = 0.8 / max(1, len(methods))
    for ax, metric in zip(axes, METRICS, strict=True):
        for k, method in enumerate(methods):
            xs, ys, errs = [], [], []
            for i, model in enumerate(models):
                row = next((r for r in rows if r["model"] == model and r["method"] == method),
                           None)
                if row is not None and not math.isnan(row[metric]):
                    xs.append(i + k * width)
                    ys.append(row[metric])
                    errs.append(row[f"{metric}_ci95"])
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=method)
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(models))])
        ax.set_xticklabels(models, rotation=20)
        ax.set_title(metric)
        if metric in ("accuracy", "ece", "auroc"):  # bounded: the interval is cut at the bounds
            ax.set_ylim(0, 1.05)
        else:
            ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_reliability(results: list[dict[str, Any]], methods: Sequence[str], path: Path) -> None:
    """Accuracy against confidence per bin, each model and method pooled over seeds."""
    plt = pyplot()
    models = sorted({r["model"] for r in results})
    fig, axes = plt.subplots(len(models), len(methods), squeeze=False,
                             figsize=(2.8 * len(methods), 2.8 * len(models)))
    for i, model in enumerate(models):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            mine = [r for r in results if r["model"] == model and r["method"] == method]
            ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
            if mine:
                pooled = Evaluation([p for r in mine for p in r["probs"]],
                                    [a for r in mine for a in r["answers"]])
                bins = reliability_bins(pooled)
                ax.bar([b[0] for b in bins], [b[1] for b in bins], width=0.08, alpha=0.7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{model} / {method}", fontsize=8)
            if i == len(models) - 1:
                ax.set_xlabel("confidence")
            if j == 0:
                ax.set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
