"""Stage task throughput and per-task overhead against plain Ray, in the same run.

    python benchmarks/stages.py [--functions 500] [--executables 200] [--nodes 1 2]

For each node count, one run on the local site whose driver alternates, for several rounds,
hpcray's StageRunner (the code `hpcray up` runs for a workflow's `stages:`, with its records,
retries and streaming bookkeeping) and the same tasks as plain Ray tasks: empty functions and
`/bin/true` executables, 0.25 CPU each, all submitted at once. Per-task overhead is a round's
wall time (submit to last completion) over its task count; the ratio is the median over rounds
of stage/plain, so both sides see the same warm workers and the same load.
Writes benchmarks/results/stages.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402
from benchmarks.results_io import pyplot, save  # noqa: E402
from hpcray.stages.records import read_attempts  # noqa: E402

CPUS = 0.25


def run_once(work: Path, nodes: int, n_fn: int, n_exe: int, rounds: int) -> dict:
    wf = work / f"stages{nodes}.yaml"
    wf.write_text(
        f"name: stages{nodes}\nallocation: {{nodes: {nodes}, walltime: 30m}}\n"
        "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
        "driver:\n  function: stage_tasks:interleaved\n"
        f"  args: {{n_functions: {n_fn}, n_executables: {n_exe}, cpus: {CPUS}, "
        f"rounds: {rounds}}}\n")
    (work / "stage_tasks.py").write_text((REPO / "benchmarks" / "stage_tasks.py").read_text())
    sub = hpcray.submit(wf, run_root=work / "runs")
    st = hpcray.wait(sub.run_dir, timeout=1800)
    if st.state != "completed":
        raise SystemExit(f"{nodes} node(s): {st.state}: {st.error}")
    measured = json.loads((sub.run_dir / "driver-result.json").read_text())
    attempts = read_attempts(sub.run_dir)
    out = {}
    for kind, n in (("functions", n_fn), ("executables", n_exe)):
        got = measured[kind]
        ratios = [a / b for a, b in zip(got["stage_s"], got["plain_s"], strict=True)]
        mine = [a for a in attempts if a["stage"].startswith(f"{kind}-") and a["stage"] !=
                f"{kind}--1"]
        assert len(mine) == n * rounds and all(a["state"] == "done" for a in mine)
        out[kind] = {"tasks": n, "stage_s": statistics.median(got["stage_s"]),
                     "plain_s": statistics.median(got["plain_s"]),
                     "ratio": got["ratio_median"],
                     "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "nodes_used": len({a["node"] for a in mine})}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=500)
    parser.add_argument("--executables", type=int, default=200)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=120)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcray-stages-") as tmp:
        for nodes in args.nodes:
            console.print(f"run with {nodes} node(s) ...")
            measured = run_once(Path(tmp), nodes, args.functions, args.executables, args.rounds)
            for kind, r in measured.items():
                rows.append({"nodes": nodes, "kind": kind, "tasks": r["tasks"],
                             "nodes_used": r["nodes_used"],
                             "stage_ms_per_task": r["stage_s"] / r["tasks"] * 1e3,
                             "plain_ms_per_task": r["plain_s"] / r["tasks"] * 1e3,
                             "stage_tasks_per_s": r["tasks"] / r["stage_s"],
                             "plain_tasks_per_s": r["tasks"] / r["plain_s"],
                             "ratio": r["ratio"], "ratio_min": r["ratio_min"],
                             "ratio_max": r["ratio_max"], "rounds": args.rounds})
    table = Table(title=f"Stage tasks vs plain Ray tasks, interleaved in one cluster, median of "
                        f"{args.rounds} rounds (0.25 CPU per task)")
    for col in ("nodes", "kind", "tasks", "nodes used", "stage ms/task", "plain Ray ms/task",
                "stage tasks/s", "plain tasks/s", "stage/plain", "range"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["nodes"]), r["kind"], str(r["tasks"]), str(r["nodes_used"]),
                      f"{r['stage_ms_per_task']:.2f}", f"{r['plain_ms_per_task']:.2f}",
                      f"{r['stage_tasks_per_s']:.0f}", f"{r['plain_tasks_per_s']:.0f}",
                      f"{r['ratio']:.2f}x", f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}")
    console.print(table)
    console.print("target: per-task overhead at most 1.2x plain Ray's")
    save("stages", rows, console, lambda path: plot(rows, path))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['kind']}\n{r['nodes']} node(s)" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["stage_ms_per_task"] for r in rows], 0.4, label="stage")
    ax.bar([i + 0.2 for i in x], [r["plain_ms_per_task"] for r in rows], 0.4,
           label="plain Ray")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("wall time per task (ms)")
    ax.set_title("Per-task overhead: hpcray stages vs plain Ray tasks (same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
