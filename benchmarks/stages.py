"""Stage task throughput and per-task overhead against plain Ray, in the same run.

    python benchmarks/stages.py [--functions 500] [--executables 200] [--nodes 1 2]

For each node count, one run on the local site: a warm-up stage, then a stage of empty
function tasks and a stage of `/bin/true` executables (every task 0.25 CPU, all submitted at
once), then a driver that runs the same tasks as plain Ray tasks in the same cluster. Per-task
overhead is a stage's wall time (first submit to last completion) over its task count.
Writes benchmarks/results/stages.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402
from hpcray.rundir import read_json  # noqa: E402
from hpcray.stages.records import read_attempts  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CPUS = 0.25


def run_once(work: Path, nodes: int, n_fn: int, n_exe: int) -> dict:
    wf = work / f"stages{nodes}.yaml"
    items = lambda n: "[" + ", ".join(str(i) for i in range(n)) + "]"  # noqa: E731
    wf.write_text(
        f"name: stages{nodes}\nallocation: {{nodes: {nodes}, walltime: 30m}}\n"
        "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
        "stages:\n"
        f"  - {{name: warm, function: 'stage_tasks:empty', each: {{items: {items(64)}}},\n"
        f"     resources: {{cpus: {CPUS}}}, max_in_flight: 64}}\n"
        f"  - {{name: functions, function: 'stage_tasks:empty', each: {{items: {items(n_fn)}}},"
        f"\n     resources: {{cpus: {CPUS}}}, max_in_flight: {n_fn}, after: [warm]}}\n"
        f"  - {{name: executables, command: [/bin/true], each: {{items: {items(n_exe)}}},\n"
        f"     resources: {{cpus: {CPUS}}}, max_in_flight: {n_exe}, after: [functions]}}\n"
        "driver:\n  function: stage_tasks:plain_ray\n"
        f"  args: {{n_functions: {n_fn}, n_executables: {n_exe}, cpus: {CPUS}}}\n"
        f"  cwd: {REPO / 'benchmarks'}\n")
    (work / "stage_tasks.py").write_text((REPO / "benchmarks" / "stage_tasks.py").read_text())
    sub = hpcray.submit(wf, run_root=work / "runs")
    st = hpcray.wait(sub.run_dir, timeout=1800)
    if st.state != "completed":
        raise SystemExit(f"{nodes} node(s): {st.state}: {st.error}")
    stages = read_json(sub.run_dir / "run.json")["stages"]
    attempts = read_attempts(sub.run_dir)
    plain = json.loads((sub.run_dir / "driver-result.json").read_text())
    out = {}
    for name, n in (("functions", n_fn), ("executables", n_exe)):
        mine = [a for a in attempts if a["stage"] == name]
        wall = max(a["finished"] for a in mine) - min(a["submitted"] for a in mine)
        out[name] = {"tasks": n, "stage_s": wall, "plain_s": plain[name],
                     "nodes_used": len({a["node"] for a in mine}), "state": stages[name]["state"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=500)
    parser.add_argument("--executables", type=int, default=200)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=120)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcray-stages-") as tmp:
        for nodes in args.nodes:
            console.print(f"run with {nodes} node(s) ...")
            for kind, r in run_once(Path(tmp), nodes, args.functions, args.executables).items():
                rows.append({"nodes": nodes, "kind": kind, "tasks": r["tasks"],
                             "nodes_used": r["nodes_used"],
                             "stage_ms_per_task": r["stage_s"] / r["tasks"] * 1e3,
                             "plain_ms_per_task": r["plain_s"] / r["tasks"] * 1e3,
                             "stage_tasks_per_s": r["tasks"] / r["stage_s"],
                             "plain_tasks_per_s": r["tasks"] / r["plain_s"],
                             "ratio": r["stage_s"] / r["plain_s"]})
    table = Table(title="Stage tasks vs plain Ray tasks, same run (0.25 CPU per task)")
    for col in ("nodes", "kind", "tasks", "nodes used", "stage ms/task", "plain Ray ms/task",
                "stage tasks/s", "plain tasks/s", "stage/plain"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["nodes"]), r["kind"], str(r["tasks"]), str(r["nodes_used"]),
                      f"{r['stage_ms_per_task']:.2f}", f"{r['plain_ms_per_task']:.2f}",
                      f"{r['stage_tasks_per_s']:.0f}", f"{r['plain_tasks_per_s']:.0f}",
                      f"{r['ratio']:.2f}x")
    console.print(table)
    console.print("target: per-task overhead at most 1.2x plain Ray's")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "stages.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / "stages.png")
    (RESULTS / "stages.txt").write_text(console.export_text())
    console.print(f"wrote {RESULTS}/stages.{{csv,png,txt}}")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
