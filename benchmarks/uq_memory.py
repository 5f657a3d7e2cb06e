"""The UQ pipeline's GPU-memory estimate against the peak a task really reaches, for a
Llama-shape model large enough for the weights and activations to matter.

    python benchmarks/uq_memory.py [--dim 2048] [--layers 16] [--batch 8] [--questions 80]

A random-weight Llama-architecture model of the given size (built here, tokenizer trained
here) is fine-tuned by the pipeline's own task code (`run_method`) on the GPU in bf16: LoRA
and Laplace, on the synthetic QA set and on the same questions behind a ~200-word context
(the length of a PubMedQA abstract). The estimate is what the packing asks Ray for
(`plan_tasks`); the peak is `torch.cuda.max_memory_allocated()` during the task. Needs a GPU;
benchmarks/gpu_check.sh runs it on the lent one. Writes benchmarks/results/uq_memory.*.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results_io import pyplot, save  # noqa: E402

WORDS = ["radiation", "dose", "cell", "repair", "strand", "break", "kinase", "signal",
         "pathway", "tumour", "tissue", "exposure", "response", "gene", "expression"]


def with_context(items, words: int, seed: int = 0):
    rng = random.Random(seed)
    return [replace(i, question="Context: " + " ".join(rng.choice(WORDS) for _ in range(words))
                    + ". " + i.question) for i in items]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--questions", type=int, default=80)
    parser.add_argument("--context-words", type=int, default=200)
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from hpcray.models.tiny import build_tiny_decoder
    from hpcray.pipelines.uq.data import read_qa, split
    from hpcray.pipelines.uq.methods import MethodOptions, check_causal_lm, run_method
    from hpcray.pipelines.uq.pipeline import UQConfig, _shape, plan_tasks
    from hpcray.pipelines.uq.synthetic import write_qa

    if not torch.cuda.is_available():
        raise SystemExit("this benchmark measures GPU memory: no GPU here")
    console = Console(record=True, width=120)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcray-uqmem-") as tmp:
        items = read_qa(write_qa(Path(tmp) / "qa.jsonl", n=args.questions))
        model_dir = build_tiny_decoder(Path(tmp) / "llama", "llama", layers=args.layers,
                                       dim=args.dim, context=1024, initializer_range=0.02)
        params = _shape(check_causal_lm(model_dir)).parameters
        config = UQConfig(models=[{"name": "llama", "path": str(model_dir)}],
                          methods=["lora", "laplace"], seeds=[0],
                          training={"batch": args.batch, "epochs": 1})
        estimate = {t.method: t.memory_gb for t in plan_tasks(config, {"llama": str(model_dir)})}
        options = MethodOptions(epochs=1, batch=args.batch)
        for data, qa in (("synthetic", items),
                         (f"+{args.context_words}-word context",
                          with_context(items, args.context_words))):
            train, test = split(qa, 0.25, 0)
            for method in ("lora", "laplace"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                result = run_method(str(model_dir), method, 0, train, test, options, "cuda")
                rows.append({"data": data, "method": method,
                             "estimate_gb": estimate[method],
                             "peak_gb": round(result["peak_gpu_memory_gb"], 2),
                             "seconds": round(time.perf_counter() - start, 1),
                             "final_loss": round(result["final_loss"], 3)})

    shape = (f"Llama-shape, {params / 1e6:.0f}M parameters (hidden {args.dim}, {args.layers} "
             f"layers), bf16, batch {args.batch}")
    table = Table(title=f"UQ task GPU memory: estimate vs peak ({shape}; "
                        f"{torch.cuda.get_device_name(0)})")
    for col in ("data", "method", "estimate GB", "peak GB", "peak / estimate", "seconds"):
        table.add_column(col, justify="left" if col in ("data", "method") else "right")
    for r in rows:
        table.add_row(r["data"], r["method"], f"{r['estimate_gb']:.2f}", f"{r['peak_gb']:.2f}",
                      f"{r['peak_gb'] / r['estimate_gb']:.2f}", f"{r['seconds']:.1f}")
    console.print(table)
    save("uq_memory", rows, console, lambda path: plot(rows, path, shape))
    return 0


def plot(rows: list[dict], path: Path, shape: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{r['method']}\n{r['data']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["estimate_gb"] for r in rows], 0.4, label="estimate")
    ax.bar([i + 0.2 for i in x], [r["peak_gb"] for r in rows], 0.4, label="measured peak")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("GB")
    ax.set_title(f"UQ task GPU memory\n{shape}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
