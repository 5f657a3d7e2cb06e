"""Laplace-LoRA's curvature and prior, side by side on the same trained adapters: the
empirical Fisher (true answers) and the GGN (answers drawn from the model), each with the
fixed prior precision 100 and with the prior chosen by marginal likelihood, against the
LoRA adapter alone.

    python benchmarks/uq_laplace.py [--questions 240] [--seeds 0 1] [--samples 8]

The UQ pipeline's setting (examples/uq.yaml): its two tiny models (Llama and Mistral
architectures, random weights, tokenizers trained here) fine-tuned on the synthetic QA set,
one adapter per model and seed, every Laplace variant evaluated around that one adapter.
Writes benchmarks/results/uq_laplace.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results_io import pyplot, save  # noqa: E402

VARIANTS = [  # (curvature, prior precision, predictive)
    ("empirical", 100.0, "sample"), ("ggn", 100.0, "sample"), ("ggn", "marglik", "sample"),
    ("empirical", 100.0, "glm"), ("ggn", 100.0, "glm"), ("empirical", "marglik", "glm"),
    ("ggn", "marglik", "glm")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=240)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from hpcray.pipelines.uq.data import read_qa, split
    from hpcray.pipelines.uq.methods import (
        PREDICTIVES,
        MethodOptions,
        _Model,
        laplace_curvature,
        laplace_prior,
    )
    from hpcray.pipelines.uq.metrics import Evaluation, evaluate
    from hpcray.pipelines.uq.pipeline import UQConfig, _model_dirs
    from hpcray.pipelines.uq.synthetic import write_qa

    torch.set_num_threads(2)
    console = Console(record=True, width=120)
    rows = []
    options = MethodOptions(epochs=args.epochs, samples=args.samples)
    with tempfile.TemporaryDirectory(prefix="hpcray-laplace-") as tmp:
        out = Path(tmp)
        items = read_qa(write_qa(out / "qa.jsonl", n=args.questions))
        config = UQConfig(models=[{"name": "tiny-llama", "tiny": "llama"},
                                  {"name": "tiny-mistral", "tiny": "mistral"}])
        dirs = _model_dirs(config, out, items)
        jobs = [(name, seed) for name in dirs for seed in args.seeds]
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("adapters", total=len(jobs))
            for name, seed in jobs:
                train, test = split(items, 0.25, seed)
                answers = [i.answer for i in test]
                torch.manual_seed(seed)
                base = _Model(dirs[name], options, "cpu")
                model = base.adapter(seed, 0.0)
                base.train(model, train, seed)
                row = {"model": name, "seed": seed}
                rows.append({**row, "method": "lora", "prior": None, "seconds": 0.0,
                             **evaluate(Evaluation(base.option_probs(model, test), answers))})
                curvatures = {}
                for kind, prior, predictive in VARIANTS:
                    start = time.perf_counter()
                    if kind not in curvatures:
                        curvatures[kind] = laplace_curvature(base, model, train, kind, seed)
                    curvature = curvatures[kind]
                    chosen = laplace_prior(prior, curvature, model)
                    probs = PREDICTIVES[predictive](base, model, curvature, chosen, test,
                                                    args.samples, seed)
                    mean_h = float(torch.cat([c.flatten() for c in curvature]).mean())
                    rows.append({**row, "method": f"laplace {predictive} {kind} prior={prior}",
                                 "prior": chosen, "mean_curvature": mean_h,
                                 "seconds": time.perf_counter() - start,
                                 **evaluate(Evaluation(probs, answers))})
                progress.advance(bar)

    table = Table(title=f"Laplace-LoRA variants, {len(args.seeds)} seeds x 2 tiny models "
                        f"({args.questions} synthetic questions, {args.samples} posterior "
                        "samples; mean over seeds)")
    for col in ("model", "method", "prior", "accuracy", "NLL", "ECE", "Brier"):
        table.add_column(col, justify="right" if col not in ("model", "method") else "left")
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["model"] == model and r["method"] == method]
            priors = [r["prior"] for r in mine if r["prior"] is not None]
            table.add_row(model, method, "-" if not priors else
                          "/".join(f"{p:.3g}" for p in priors),
                          *(f"{statistics.mean(r[k] for r in mine):.3f}"
                            for k in ("accuracy", "nll", "ece", "brier")))
    console.print(table)
    save("uq_laplace", rows, console, lambda path: plot(rows, path))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    width = 0.8 / len(models)
    for ax, metric in zip(axes, ("accuracy", "nll", "ece"), strict=True):
        for j, model in enumerate(models):
            values = [statistics.mean(r[metric] for r in rows
                                      if r["model"] == model and r["method"] == m)
                      for m in methods]
            ax.bar([i + j * width for i in range(len(methods))], values, width, label=model)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(methods))])
        ax.set_xticklabels([m.replace("laplace ", "").replace(" prior=", " ").replace(" ", "\n")
                            for m in methods], fontsize=7)
        ax.set_title(metric.upper() if metric != "accuracy" else metric)
    axes[0].axhline(0.25, color="grey", lw=0.8, ls="--")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle("Laplace-LoRA: curvature x prior precision (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
