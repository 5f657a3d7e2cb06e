"""The paper's experiment 3: where inference dominates the response time, for a model served
locally (a replica in the allocation, direct path) and remotely (another hpcray run's
OpenAI-compatible HTTP API behind a proxy adding the cloud-node latency).

    python benchmarks/inference.py [--requests 100] [--max-tokens 16] [--one-way-ms 0.47]
                                   [--model DIR] [--gpus 0.5] [--dtype bfloat16] [--name N]

The model is the tiny GPT-2 (real architecture, random weights, built locally) on CPUs; with
--gpus each replica gets that share of a GPU (benchmarks/gpu_check.sh runs it so on the lent
GPU with a larger Llama-shape model). Writes benchmarks/results/<name>.{csv,png,txt}
(name: inference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402
from benchmarks.results_io import pyplot, save  # noqa: E402
from tests.remote.site import free_port  # noqa: E402

HEAD = "allocation: {nodes: 1, walltime: 30m}\nray: {object_store_memory: 200000000}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--one-way-ms", type=float, default=0.47)
    parser.add_argument("--model", help="a causal LM directory (default: the tiny GPT-2)")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPU share of each replica")
    parser.add_argument("--dtype", default="auto", help="weights' dtype in the replicas")
    parser.add_argument("--name", default="inference", help="results' file name")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=110)
    with tempfile.TemporaryDirectory(prefix="hpcray-exp3-") as tmp:
        work = Path(tmp)
        (work / "inference_tasks.py").write_text(
            (REPO / "benchmarks" / "inference_tasks.py").read_text())
        model = args.model
        if model is None:
            from hpcray.models.tiny import build_tiny_causal_lm

            model = str(build_tiny_causal_lm(work / "tiny-gpt2"))
        llm = (f"deployment: transformers_llm, resources: {{cpus: 0.5, gpus: {args.gpus}}}, "
               f"args: {{model_path: '{model}', max_new_tokens: {args.max_tokens}, "
               f"dtype: {args.dtype}}}")
        site_a = work / "sitea.yaml"
        site_a.write_text(f"name: sitea\n{HEAD}services:\n  - {{name: llm, {llm}}}\n"
                          "driver: {command: [sleep, '3600']}\n")
        console.print("site A: a run serving the model over HTTP ...")
        a = hpcray.submit(site_a, run_root=work / "runs")
        proxy = None
        try:
            deadline = time.monotonic() + 300
            while not (a.run_dir / "endpoints.json").exists():
                if hpcray.status(a.run_dir).finished or time.monotonic() > deadline:
                    raise SystemExit(f"site A did not start: {hpcray.logs(a.run_dir)[-2000:]}")
                time.sleep(0.5)
            openai = json.loads((a.run_dir / "endpoints.json").read_text())["openai"]
            host_port = openai.split("//")[1].split("/")[0]
            port = free_port()
            proxy = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "remote" / "delayproxy.py"), "127.0.0.1",
                 str(port), *host_port.rsplit(":", 1), str(args.one_way_ms)],
                stdout=subprocess.PIPE, text=True)
            assert proxy.stdout.readline().strip() == "ready"
            remote_url = f"http://127.0.0.1:{port}/v1"
            site_b = work / "siteb.yaml"
            site_b.write_text(
                f"name: siteb\n{HEAD}services:\n  - {{name: local-llm, {llm}}}\n"
                f"  - {{name: remote-llm, replicas: 0, remote: [{{url: '{remote_url}', "
                "kind: openai, model: llm, name: site-a}]}\n"
                "driver:\n  function: inference_tasks:split\n"
                f"  args: {{services: [local-llm, remote-llm], n: {args.requests}, "
                f"max_tokens: {args.max_tokens}}}\n")
            console.print("site B: the same model locally and site A remotely ...")
            b = hpcray.submit(site_b, run_root=work / "runs")
            st = hpcray.wait(b.run_dir, timeout=1200)
            if st.state != "completed":
                raise SystemExit(f"site B: {st.error}\n{hpcray.logs(b.run_dir)[-3000:]}")
            measured = json.loads((b.run_dir / "driver-result.json").read_text())
        finally:
            if proxy is not None:
                proxy.kill()
            hpcray.cancel(a.run_dir)

    where = f"{args.gpus:g} GPU per replica" if args.gpus else "CPU"
    model_name = Path(args.model).name if args.model else "tiny GPT-2"
    table = Table(title=f"Experiment 3: generate ({args.max_tokens} tokens), {model_name} on "
                        f"{where}, {args.requests} requests")
    for col in ("served", "p50 ms", "inference ms", "service ms", "communication ms",
                "inference share"):
        table.add_column(col, justify="right")
    rows = []
    for name, m in measured.items():
        total = m["inference_ms"] + m["service_ms"] + m["communication_ms"]
        share = m["inference_ms"] / total if total else 0.0
        rows.append({"served": name, **m, "inference_share": share})
        table.add_row(name, f"{m['p50_ms']:.2f}", f"{m['inference_ms']:.2f}",
                      f"{m['service_ms']:.3f}", f"{m['communication_ms']:.3f}", f"{share:.1%}")
    console.print(table)
    console.print("local: a replica over the direct path (server-reported split); remote: site "
                  f"A's /v1 behind {args.one_way_ms} ms each way (split estimated from the "
                  "probe round trip; an OpenAI-compatible server reports no timing)")
    save(args.name, rows, console, lambda path: plot(rows, path, f"{model_name} on {where}"))
    return 0


def plot(rows: list[dict], path: Path, where: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = [r["served"] for r in rows]
    bottom = [0.0] * len(rows)
    for part in ("communication_ms", "service_ms", "inference_ms"):
        values = [r[part] for r in rows]
        ax.bar(names, values, bottom=bottom, label=part.replace("_ms", ""))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("ms per request (mean)")
    ax.set_title(f"Experiment 3: RT components, local vs remote\n{where}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
