"""NOOP round trip of this tree against another checkout of hpcray, in one session: is a
change slower, or is the machine slower today?

    python benchmarks/noop_ab.py --baseline DIR [--pairs 2] [--calls 5000]

DIR is a checkout of the baseline (`git worktree add DIR <commit>`). Each run is a fresh
local run with one NOOP replica on the direct path, measured through `hpcray.service` by a
connected program started with `PYTHONPATH=<tree>` (so the run's processes import that
tree too); baseline and this tree alternate, `pairs` times. Writes
benchmarks/results/noop_ab.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results_io import pyplot, save  # noqa: E402

ONE_RUN = '''
import json, sys, tempfile, time
from pathlib import Path
import hpcray
calls = int(sys.argv[1])
with tempfile.TemporaryDirectory(prefix="hpcray-ab-") as tmp:
    wf = Path(tmp) / "ab.yaml"
    wf.write_text("name: ab\\nallocation: {nodes: 1, walltime: 30m}\\n"
                  "ray: {object_store_memory: 100000000, teardown_grace: 5}\\n"
                  "services:\\n  - {name: noop, deployment: noop, resources: {cpus: 0.25}}\\n")
    sub = hpcray.submit(wf, run_root=Path(tmp) / "runs")
    try:
        deadline = time.monotonic() + 240
        while "services_ready" not in hpcray.status(sub.run_dir).times:
            if hpcray.status(sub.run_dir).finished or time.monotonic() > deadline:
                raise SystemExit(hpcray.logs(sub.run_dir)[-2000:])
            time.sleep(0.5)
        hpcray.connect(sub.run_dir)
        handle = hpcray.service("noop")
        for _ in range(500):
            handle.call("echo", 1)
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            handle.call("echo", 1)
            lat.append(time.perf_counter() - t)
        lat.sort()
        print(json.dumps({"hpcray": hpcray.__file__, "p50_us": lat[calls // 2] * 1e6,
                          "p90_us": lat[calls * 9 // 10] * 1e6}), flush=True)
    finally:
        hpcray.cancel(sub.run_dir)
'''


def one_run(tree: Path, calls: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(calls)], capture_output=True,
                         text=True, env=env, timeout=600, cwd=tree)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["hpcray"].startswith(str(tree)):
        raise SystemExit(f"{tree}: imported {result['hpcray']}, not this tree's hpcray")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=100)
    rows = []
    for pair in range(args.pairs):
        for label, tree in (("baseline", args.baseline.resolve()), ("this tree", REPO)):
            got = one_run(tree, args.calls)
            rows.append({"pair": pair, "tree": label, "p50_us": round(got["p50_us"], 1),
                         "p90_us": round(got["p90_us"], 1)})
            console.print(f"{label}, pair {pair}: p50 {got['p50_us']:.1f} us")
    table = Table(title=f"NOOP RT through a handle, {args.calls} calls per run")
    for col in ("pair", "tree", "p50 us", "p90 us"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["pair"]), r["tree"], f"{r['p50_us']:.1f}", f"{r['p90_us']:.1f}")
    console.print(table)
    mean = {t: sum(r["p50_us"] for r in rows if r["tree"] == t) / args.pairs
            for t in ("baseline", "this tree")}
    console.print(f"p50, mean of {args.pairs} runs each: this tree {mean['this tree']:.1f} us, "
                  f"baseline {mean['baseline']:.1f} us: "
                  f"{mean['this tree'] / mean['baseline']:.3f}x")
    save("noop_ab", rows, console, lambda path: plot(rows, path))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label in ("baseline", "this tree"):
        mine = [r for r in rows if r["tree"] == label]
        ax.plot([r["pair"] for r in mine], [r["p50_us"] for r in mine], marker="o", label=label)
    ax.set_xlabel("pair (runs alternate)")
    ax.set_ylabel("NOOP RT p50 (us)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
