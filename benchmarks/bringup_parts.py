"""What each change to bring-up and teardown bought, measured side by side (issue: bring-up
and teardown at the speed of the machine). Three parts, each old way against new, alternating
--repeats times on this machine:

- replica imports: what a NOOP replica process imports of hpcray before it can take requests,
  now (each name on first use) against the whole public API as `import hpcray` loaded before;
- Serve teardown: 8 NOOP applications deleted one after another (blocking, Serve's default
  2 s drain poll) against all deleted at once and Serve shut down once (0.1 s poll);
- node stop: `ray start --block` stopped by TERM alone (it stops its processes one by one,
  a second each) against hpcray's teardown (raylet and GCS first, then the rest killed).

    python benchmarks/bringup_parts.py [--repeats 3]

Writes benchmarks/results/bringup_parts.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from results_io import save  # noqa: E402

IMPORTS = {  # what the replica process imports of hpcray, after Serve's own replica module
    "old": "import hpcray.api, hpcray.services.manager, hpcray.services.serving, "
           "hpcray.runcontext, hpcray.services.replica",
    "new": "import hpcray.services.replica",
}
IMPORT_CODE = ("import time, ray.serve._private.replica\nt = time.perf_counter()\n{stmt}\n"
               "from hpcray.services.registry import load_class\n"
               "load_class('hpcray.deployments.noop:Noop')\nprint(time.perf_counter() - t)")

SERVE_CODE = """
import sys, time, ray
from ray import serve
way = sys.argv[1]
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
serve.start()
loop = 2.0 if way == "old" else 0.1
@serve.deployment(ray_actor_options={"num_cpus": 0.05}, graceful_shutdown_wait_loop_s=loop)
class Noop:
    def __call__(self):
        return "ok"
serve.run_many([serve.RunTarget(Noop.bind(), name=f"a{i}", route_prefix=None)
                for i in range(8)], wait_for_applications_running=True)
t = time.perf_counter()
if way == "old":
    for i in range(8):
        serve.delete(f"a{i}")
else:
    for i in range(8):
        serve.delete(f"a{i}", _blocking=False)
serve.shutdown()
print(time.perf_counter() - t)
ray.shutdown()
"""


def imports(way: str) -> float:
    out = subprocess.run([sys.executable, "-c", IMPORT_CODE.format(stmt=IMPORTS[way])],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def serve_teardown(way: str) -> float:
    out = subprocess.run([sys.executable, "-c", SERVE_CODE, way], capture_output=True,
                         text=True, check=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def node_stop(way: str) -> float:
    import psutil

    from hpcray.runtime.teardown import MARKER, job_processes, teardown

    scope = f"bench-{os.getpid()}-{time.monotonic_ns()}/n0"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = f"/tmp/hrbench{os.getpid()}{way}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}",
         "--disable-usage-stats"], env={**os.environ, MARKER: scope},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # up: its raylet runs
        kids = psutil.Process(proc.pid).children(recursive=True)
        if any(k.name() == "raylet" for k in kids) and len(kids) >= 6:
            break
        time.sleep(0.2)
    time.sleep(2)
    t = time.perf_counter()
    if way == "old":
        proc.terminate()
        proc.wait(timeout=60)
        took = time.perf_counter() - t
        teardown(scope, grace=5)  # what it left (counted as the old way's)
    else:
        teardown(scope, [proc.pid], grace=10)
        took = time.perf_counter() - t
    assert not [p for p in job_processes(scope) if p.status() != psutil.STATUS_ZOMBIE]
    subprocess.run(["rm", "-rf", temp], check=False)
    return took


PARTS = {"replica imports": imports, "Serve teardown, 8 apps": serve_teardown,
         "node stop": node_stop}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True)
    rows = []
    for part, measure in PARTS.items():
        for rep in range(args.repeats):
            for way in ("old", "new"):
                rows.append({"part": part, "way": way, "repeat": rep,
                             "seconds": round(measure(way), 4)})
    table = Table(title=f"Old way against new, seconds: median of {args.repeats} (min-max); "
                        "ratio = new / old")
    for col in ("part", "old", "new", "ratio"):
        table.add_column(col, justify="right")
    medians = {}
    for part in PARTS:
        cells = []
        for way in ("old", "new"):
            vals = [r["seconds"] for r in rows if r["part"] == part and r["way"] == way]
            medians[part, way] = statistics.median(vals)
            cells.append(f"{medians[part, way]:.3f} ({min(vals):.3f}-{max(vals):.3f})")
        table.add_row(part, *cells, f"{medians[part, 'new'] / medians[part, 'old']:.2f}")
    console.print(table)

    def draw(path: Path) -> None:
        from hpcray.metrics.plotting import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, len(PARTS), figsize=(10, 3.4))
        for ax, part in zip(axes, PARTS, strict=True):
            ax.bar(["old", "new"], [medians[part, "old"], medians[part, "new"]],
                   color=["tab:gray", "tab:blue"])
            ax.set_title(part, fontsize=9)
            ax.set_ylabel("seconds (median)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    save("bringup_parts", rows, console, draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
