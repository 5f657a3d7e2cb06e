"""The paper's experiment 1 (service bootstrap time, BT) on this machine.

    python benchmarks/service_bootstrap.py [--replicas 1 2 4 8 16] [--repeats 1]

For each N, a run on the local site starts one NOOP service with N replicas (and the tiny
GPT-2 through transformers_llm, whose init is a real checkpoint load); every replica's
BT is split as in the paper's Figure 3: launch (deploy request -> replica process runs),
init (the service's constructor: model load), publish (RUNNING -> first successful call
through a handle). All N replicas are requested at once. Writes
benchmarks/results/service_bootstrap.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PARTS = ("launch", "init", "publish")


def run_once(work: Path, replicas: int, deployment: str = "noop", args: str = "{}") -> list[dict]:
    wf = work / f"bt{replicas}.yaml"
    wf.write_text(f"name: bt{replicas}\nallocation: {{nodes: 1, walltime: 20m}}\n"
                  "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                  f"services:\n  - {{name: svc, deployment: {deployment}, replicas: {replicas},\n"
                  f"     args: {args}, resources: {{cpus: 0.05}}, readiness_timeout: 600}}\n"
                  "driver: {command: ['true']}\n")
    sub = hpcray.submit(wf, run_root=work / "runs")
    st = hpcray.wait(sub.run_dir, timeout=900)
    if st.state != "completed":
        raise SystemExit(f"N={replicas}: {st.state}: {st.error}")
    metrics = json.loads((sub.run_dir / "metrics" / "services.json").read_text())
    return metrics["svc"]["bt"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--llm-replicas", type=int, nargs="*", default=[1, 2],
                        help="also start the tiny GPT-2 (transformers_llm) with N replicas")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(record=True)
    rows = []
    configs = [("noop", n) for n in args.replicas] + [("tiny LLM", n) for n in args.llm_replicas]
    with tempfile.TemporaryDirectory(prefix="hpcray-bt-") as tmp, Progress(console=console) as bar:
        model = None
        if args.llm_replicas:
            from hpcray.models.tiny import build_tiny_causal_lm

            model = build_tiny_causal_lm(Path(tmp) / "tiny-gpt2")
        task = bar.add_task("service bootstrap runs", total=len(configs) * args.repeats)
        for rep in range(args.repeats):
            for kind, n in configs:
                if kind == "noop":
                    bts = run_once(Path(tmp), n)
                else:
                    bts = run_once(Path(tmp), n, "transformers_llm", f"{{model_path: '{model}'}}")
                for r in bts:
                    rows.append({"service": kind, "replicas": n, "repeat": rep,
                                 "replica": r["replica"], **{p: r[p] for p in PARTS}})
                bar.advance(task)

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "service_bootstrap.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["service", "replicas", "repeat", "replica",
                                               *PARTS])
        writer.writeheader()
        writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                         for r in rows)
    table = Table(title="Service bootstrap time per replica, seconds: mean (max)")
    for col in ("service", "replicas", *PARTS, "BT"):
        table.add_column(col, justify="right")
    means = {}
    for kind, n in configs:
        sel = [r for r in rows if r["replicas"] == n and r["service"] == kind]
        means[kind, n] = {p: statistics.mean(r[p] for r in sel) for p in PARTS}
        bt = [sum(r[p] for p in PARTS) for r in sel]
        table.add_row(kind, str(n), *(f"{means[kind, n][p]:.3f} ({max(r[p] for r in sel):.3f})"
                                for p in PARTS), f"{statistics.mean(bt):.3f} ({max(bt):.3f})")
    console.print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [str(n) if kind == "noop" else f"LLM\n{n}" for kind, n in configs]
    bottom = [0.0] * len(labels)
    for part, color in zip(PARTS, ("tab:orange", "tab:green", "tab:red"), strict=True):
        values = [means[c][part] for c in configs]
        ax.bar(labels, values, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("replicas started together (NOOP; tiny GPT-2 'LLM')")
    ax.set_ylabel("seconds per replica (mean)")
    ax.set_title("Service bootstrap time (BT) on Ray Serve, this machine")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "service_bootstrap.png", dpi=120)
    console.save_text(str(RESULTS / "service_bootstrap.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
