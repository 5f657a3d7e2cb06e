"""The paper's experiment 1 (service bootstrap time, BT) on this machine.

    python benchmarks/service_bootstrap.py [--replicas 1 2 4 8 16] [--repeats 1]

For each N, a run on the local site starts one NOOP service with N replicas (and the tiny
GPT-2 through transformers_llm, whose init is a real checkpoint load); every replica's
BT is split as in the paper's Figure 3: launch (deploy request -> replica process runs),
init (the service's constructor: model load), publish (RUNNING -> first successful call
through a handle). All N replicas are requested at once.

Program services: for each N of --programs, one run starts a class service (`noop`) and a
program service (a small HTTP server, tests/fixtures/services/http_program.py) with N
replicas each, side by side in the same run; their BT is compared per part. The first of
those runs also times the same echo through both on the direct path (benchmarks/program_rt.py).

Writes benchmarks/results/service_bootstrap.{csv,png,txt} and
benchmarks/results/program_services.{csv,png,txt}.
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
PROGRAM = REPO / "tests" / "fixtures" / "services" / "http_program.py"


def write_rows(path: Path, rows: list[dict]) -> None:
    """One BT record per replica: service, replicas, repeat, replica and the three parts."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["service", "replicas", "repeat", "replica",
                                               *PARTS])
        writer.writeheader()
        writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                         for r in rows)


def stacked_bars(bars: dict[str, dict[str, float]], xlabel: str, title: str,
                 path: Path) -> None:
    """A bar per label, its BT parts stacked (the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(bars)
    for part, color in zip(PARTS, ("tab:orange", "tab:green", "tab:red"), strict=True):
        values = [means[part] for means in bars.values()]
        ax.bar(list(bars), values, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seconds per replica (mean)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def program_run(work: Path, replicas: int, rt_calls: int) -> tuple[dict, dict | None]:
    """One run: class and program services of N replicas each, requested together."""
    command = json.dumps([sys.executable, str(PROGRAM), "--port", "{port}", "--host", "{host}",
                          "--quiet"])
    driver = (f"driver: {{function: 'program_rt:main', cwd: '{REPO / 'benchmarks'}', "
              f"args: {{calls: {rt_calls}}}}}\n" if rt_calls else "driver: {command: ['true']}\n")
    wf = work / f"prog{replicas}.yaml"
    wf.write_text(f"name: prog{replicas}\nallocation: {{nodes: 1, walltime: 20m}}\n"
                  "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                  f"services:\n  - {{name: cls, deployment: noop, replicas: {replicas},\n"
                  "     resources: {cpus: 0.05}, readiness_timeout: 600}\n"
                  f"  - {{name: prog, command: {command}, replicas: {replicas},\n"
                  "     readiness: {output: 'listening on'}, resources: {cpus: 0.05},\n"
                  "     readiness_timeout: 600}\n" + driver)
    sub = hpcray.submit(wf, run_root=work / "runs")
    st = hpcray.wait(sub.run_dir, timeout=900)
    if st.state != "completed":
        raise SystemExit(f"programs N={replicas}: {st.state}: {st.error}")
    metrics = json.loads((sub.run_dir / "metrics" / "services.json").read_text())
    rt = json.loads((sub.run_dir / "driver-result.json").read_text()) if rt_calls else None
    return {"class": metrics["cls"]["bt"], "program": metrics["prog"]["bt"]}, rt


def programs(ns: list[int], repeats: int, rt_calls: int, console, bar) -> None:
    """BT of program against class replicas, and the echo's round trip through both."""
    from rich.table import Table

    rows, rt = [], None
    task = bar.add_task("program vs class services", total=len(ns) * repeats)
    with tempfile.TemporaryDirectory(prefix="hpcray-prog-") as tmp:
        for rep in range(repeats):
            for n in ns:
                bts, got = program_run(Path(tmp), n, rt_calls if rt is None else 0)
                rt = rt or got
                for kind, records in bts.items():
                    rows += [{"service": kind, "replicas": n, "repeat": rep,
                              "replica": r["replica"], **{p: r[p] for p in PARTS}}
                             for r in records]
                bar.advance(task)
    write_rows(RESULTS / "program_services.csv", rows)
    table = Table(title="BT per replica, class vs program service started together in one "
                        "run, seconds: mean (max); ratio = program / class")
    for col in ("replicas", "service", *PARTS, "BT", "ratio"):
        table.add_column(col, justify="right")
    means: dict[tuple[str, int], dict[str, float]] = {}
    for n in ns:
        for kind in ("class", "program"):
            sel = [r for r in rows if r["replicas"] == n and r["service"] == kind]
            means[kind, n] = {p: statistics.mean(r[p] for r in sel) for p in PARTS}
            means[kind, n]["BT"] = statistics.mean(sum(r[p] for p in PARTS) for r in sel)
        for kind in ("class", "program"):
            m = means[kind, n]
            ratio = m["BT"] / means["class", n]["BT"]
            table.add_row(str(n), kind, *(f"{m[p]:.3f}" for p in PARTS), f"{m['BT']:.3f}",
                          f"{ratio:.2f}")
    console.print(table)
    if rt is not None:
        rt_table = Table(title=f"Echo round trip on the direct path, {rt['class']['n']} calls "
                               "each, interleaved, ms; ratio = p50 / class p50")
        for col in ("path", "p50", "p95", "mean", "inference (p50)", "service (p50)", "ratio"):
            rt_table.add_column(col, justify="right")
        for name, r in rt.items():
            rt_table.add_row(name, f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}",
                             f"{r['mean_ms']:.3f}", f"{r.get('inference_ms', 0):.3f}",
                             f"{r.get('service_ms', 0):.3f}",
                             f"{r['p50_ms'] / rt['class']['p50_ms']:.2f}")
        console.print(rt_table)
        with open(RESULTS / "program_services_rt.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "n", "p50_ms", "p95_ms", "mean_ms", "inference_ms",
                             "service_ms"])
            for name, r in rt.items():
                writer.writerow([name, r["n"], *(round(r.get(k, 0.0), 4) for k in (
                    "p50_ms", "p95_ms", "mean_ms", "inference_ms", "service_ms"))])

    bars = {f"{n}\n{k[:4]}": means[k, n] for n in ns for k in ("class", "program")}
    stacked_bars(bars, "replicas of each, started together (class NOOP; program HTTP server)",
                 "BT: program services against class services, one run each N",
                 RESULTS / "program_services.png")


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
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--llm-replicas", type=int, nargs="*", default=[1, 2],
                        help="also start the tiny GPT-2 (transformers_llm) with N replicas")
    parser.add_argument("--programs", type=int, nargs="*", default=[1, 2, 4, 8],
                        help="program vs class services, N replicas each (none: skip)")
    parser.add_argument("--rt-calls", type=int, default=1000,
                        help="echo round trips through each, in the first program run")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(record=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.programs:
        with Progress(console=console) as bar:
            programs(args.programs, args.repeats, args.rt_calls, console, bar)
        console.save_text(str(RESULTS / "program_services.txt"))
        console = Console(record=True)
    if not args.replicas and not args.llm_replicas:
        return 0
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
    write_rows(RESULTS / "service_bootstrap.csv", rows)
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

    bars = {(str(n) if kind == "noop" else f"LLM\n{n}"): means[kind, n] for kind, n in configs}
    stacked_bars(bars, "replicas started together (NOOP; tiny GPT-2 'LLM')",
                 "Service bootstrap time (BT) on Ray Serve, this machine",
                 RESULTS / "service_bootstrap.png")
    console.save_text(str(RESULTS / "service_bootstrap.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
