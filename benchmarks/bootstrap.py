"""Bootstrap time: from `hpcray submit` to all nodes joined, split into its parts.

    python benchmarks/bootstrap.py [--repeats 3] [--no-slurm]

For 1 and 2 nodes on the local site and on the test Slurm (tests/slurm/testcluster.py, started
here when slurm-wlm is installed). Parts, which add up to submit -> all joined:
  queue    submit -> `hpcray up` starts in the job
  launch   -> the head node's agent runs (allocation, plan, token, launcher, interpreter)
  head up  -> `ray start --head` has its GCS reachable
  joined   -> every node (head included) registered with the GCS
Baseline in the same run: a bare `ray start --head` on this machine (the CLI returns when the
head node is fully up), so `head up + joined` reads as a ratio against Ray's own start time and
`queue + launch` is what hpcray adds around it.
Writes benchmarks/results/bootstrap.csv and bootstrap.png and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "slurm"))

import hpcray  # noqa: E402
from hpcray.rundir import read_json  # noqa: E402
from hpcray.runtime.auth import auth_env, create_token  # noqa: E402
from hpcray.runtime.ports import claim_block, release_block  # noqa: E402
from hpcray.runtime.teardown import MARKER, teardown  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PARTS = ["queue", "launch", "head up", "joined"]


def workflow(path: Path, nodes: int) -> Path:
    path.write_text(f"name: bench{nodes}\nallocation: {{nodes: {nodes}, walltime: 10m, "
                    "gpus_per_node: 0, cpus_per_node: 1}\n"
                    "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                    "driver: {command: ['true']}\n")
    return path


def parts_of(run_dir: Path) -> dict[str, float]:
    t = read_json(run_dir / "run.json")["times"]
    head_name = read_json(run_dir / "plan.json")["nodes"][0]["name"]
    head = read_json(run_dir / "nodes" / f"{head_name}.json")
    agent = head["times"]["started"]
    return {"queue": t["job_started"] - t["submitted"], "launch": agent - t["job_started"],
            "head up": t["head_up"] - agent, "joined": t["all_joined"] - t["head_up"],
            "total": t["all_joined"] - t["submitted"]}


def bare_ray_head(tmp: Path) -> float:
    """`ray start --head` alone, with a private temp dir, ports and token; then torn down."""
    token = create_token(tmp / "secrets" / "token")
    block = claim_block("bench-baseline", 0)
    scope = f"bench-baseline-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, **auth_env(token), MARKER: scope, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
                    f"--temp-dir=/tmp/hrbench{os.getpid()}", "--num-cpus=1", "--num-gpus=0",
                    "--include-dashboard=false", "--disable-usage-stats",
                    "--object-store-memory=100000000", *block.ray_flags()],
                   env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    teardown(scope, grace=5)
    release_block(block)
    subprocess.run(["rm", "-rf", f"/tmp/hrbench{os.getpid()}"], check=False)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-slurm", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(record=True)
    configs = [("local", 1), ("local", 2)]
    cluster = None
    slurm_root = None
    if not args.no_slurm:
        import testcluster

        if testcluster.missing_binaries() or os.geteuid() != 0:
            console.print("[yellow]test Slurm not available: local site only")
        else:
            slurm_root = Path(tempfile.mkdtemp(prefix="hsb", dir="/tmp"))
            cluster = testcluster.start(slurm_root, nodes=2, cpus=2, gpus=0)
            os.environ["SLURM_CONF"] = str(cluster.conf)
            os.environ["HPCRAY_SITES_PATH"] = str(REPO / "tests" / "fixtures" / "sites")
            configs += [("testslurm", 1), ("testslurm", 2)]

    rows: list[dict] = []
    baseline: list[float] = []
    work = Path(tempfile.mkdtemp(prefix="hpcray-bench-"))
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("bootstrap runs", total=len(configs) * args.repeats)
            for rep in range(args.repeats):
                baseline.append(bare_ray_head(work / f"base{rep}"))
                for site, nodes in configs:
                    wf = workflow(work / f"bench{nodes}.yaml", nodes)
                    sub = hpcray.submit(wf, site=site, run_root=work / "runs")
                    st = hpcray.wait(sub.run_dir, timeout=300)
                    if st.state != "completed":
                        raise SystemExit(f"{site}/{nodes}: {st.state}: {st.error}")
                    rows.append({"site": site, "nodes": nodes, "repeat": rep,
                                 **parts_of(sub.run_dir)})
                    progress.advance(task)
    finally:
        if cluster is not None:
            testcluster.stop(slurm_root)
        subprocess.run(["rm", "-rf", str(work)], check=False)

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "bootstrap.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["site", "nodes", "repeat", *PARTS, "total"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 3) if isinstance(v, float) else v)
                             for k, v in row.items()})
        for i, b in enumerate(baseline):
            writer.writerow({"site": "bare ray start --head", "nodes": 1, "repeat": i,
                             "head up": round(b, 3), "total": round(b, 3)})

    base = statistics.median(baseline)
    table = Table(title=f"submit -> all nodes joined, seconds (median of {args.repeats})")
    for col in ["site", "nodes", *PARTS, "total", "(head up + joined) / bare ray start"]:
        table.add_column(col, justify="right")
    summary = []
    for site, nodes in configs:
        sel = [r for r in rows if r["site"] == site and r["nodes"] == nodes]
        med = {p: statistics.median(r[p] for r in sel) for p in [*PARTS, "total"]}
        summary.append((f"{site}\n{nodes} node{'s' if nodes > 1 else ''}", med))
        table.add_row(site, str(nodes), *(f"{med[p]:.2f}" for p in [*PARTS, "total"]),
                      f"{(med['head up'] + med['joined']) / base:.2f}x")
    table.add_row("bare ray start --head", "1", "", "", f"{base:.2f}", "", f"{base:.2f}", "1.00x")
    console.print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(summary)
    for part in PARTS:
        values = [m[part] for _, m in summary]
        ax.bar([label for label, _ in summary], values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(base, color="black", linestyle="--", linewidth=1, label="bare ray start --head")
    ax.set_ylabel("seconds")
    ax.set_title("hpcray bootstrap: submit to all nodes joined")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bootstrap.png", dpi=120)
    meta = {"repeats": args.repeats, "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / "bootstrap.json").write_text(json.dumps(meta, indent=2) + "\n")
    console.print(f"wrote {RESULTS / 'bootstrap.csv'} and {RESULTS / 'bootstrap.png'}")
    console.save_text(str(RESULTS / "bootstrap.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
