"""Elastic runs on the test Slurm: what growing, shrinking and relaying cost, and a service
autoscaling under a step load.

    python benchmarks/elastic.py [--repeats 3] [--skip relay,autoscale]

Side by side in one session (tests/slurm/testcluster.py, 2 emulated nodes, started here):
  fresh      submit of a 1-node run -> its one task runs (queue + bring-up + first task):
             the baseline a grown node is held against
  grow       `hpcray.grow` -> the first waiting task runs on the new node (queue of the
             worker job + its node's join + the task's start)
  shrink     `hpcray.shrink` of an idle worker job -> the job has ended (drain, teardown)
  relay gap  the first job's end -> the services answer in the successor (run.json), after
             `scancel --batch --signal=USR2`; against the successor's own bring-up + BT
  autoscale  a direct-path service (min 1, max 4 replicas) under 1 -> 16 -> 1 clients on the
             local site: replicas and p99 round trip per 2 s window over time
Targets (issue 19): grow <= a fresh node's join plus the scheduler's queue time; a relay's gap
<= one bring-up plus the services' BT.
Writes benchmarks/results/elastic.{csv,png,txt} and elastic_autoscale.csv (`--report-only`:
the tables and the picture again from those CSVs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "slurm"))
sys.path.insert(0, str(REPO / "benchmarks"))

import hpcray  # noqa: E402
from hpcray.rundir import read_json  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
HEADER = ("allocation: {nodes: 1, walltime: 10m, gpus_per_node: 0}\n"
          "ray: {object_store_memory: 100000000, teardown_grace: 5}\n")


def wait_for(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.05)
    return time.time()


def stage_workflow(work: Path, name: str, gate: Path, items: int, extra: str = "") -> Path:
    """Tasks from tests/fixtures/stages/elasticfns.py (say where they run, hold at a gate);
    the driver keeps the run up until `<gate>.end`."""
    path = FIXTURES / "stages" / f"bench-{name}-{work.name}.yaml"
    path.write_text(
        f"name: {name}\n" + HEADER + extra + "stages:\n"
        f"  - name: work\n    function: elasticfns:held\n    args: {{gate: '{gate}'}}\n"
        f"    each: {{items: [{', '.join(str(i) for i in range(items))}]}}\n"
        "    resources: {cpus: 1}\n"
        f"driver:\n  command: [sh, -c, 'while [ ! -e {gate}.end ]; do sleep 0.2; done']\n")
    return path


def running(gate: Path, node: str) -> int:
    return len(list(gate.parent.glob(f"{gate.name}.running-{node}-*")))


def job(run_dir: Path, tag: str) -> dict:
    return (read_json(run_dir / "run.json", {}) or {}).get("jobs", {}).get(tag, {})


def grow_and_shrink(work: Path, site: str, rep: int) -> dict:
    """One fresh 1-node run (its first task's start from submit), then grown by a 1-node
    worker job while two tasks wait (grow -> first task there), then that job released
    once idle (shrink -> ended)."""
    gate = work / f"g{rep}" / "gate"
    gate.parent.mkdir(parents=True)
    path = stage_workflow(work, "benchgrow", gate, 4)
    t_submit = time.time()
    try:
        sub = hpcray.submit(path, site=site, run_root=work / "runs")
        fresh = wait_for(lambda: len(list(gate.parent.glob(f"{gate.name}.running-*"))) == 2,
                         300, "first tasks") - t_submit
        first = read_json(sub.run_dir / "run.json")["node_names"][0]
        other = next(n for n in ("node1", "node2") if n != first)
        t_grow = time.time()
        grown = hpcray.grow(sub.run_dir, nodes=1)
        grow = wait_for(lambda: running(gate, other) >= 1, 300, "a task on the new node") \
            - t_grow
        (gate.parent / f"{gate.name}.go").write_text("")
        wait_for(lambda: len(list(gate.parent.glob(f"{gate.name}.done-*"))) == 4, 120, "tasks")
        t_shrink = time.time()
        hpcray.shrink(sub.run_dir, job=grown.tag, timeout=300)
        shrink = time.time() - t_shrink
        (gate.parent / f"{gate.name}.end").write_text("")
        st = hpcray.wait(sub.run_dir, timeout=180)
        if st.state != "completed":
            raise SystemExit(f"grow run: {st.state}: {st.error}")
        phases = read_json(sub.run_dir / "run.json")["phases"]
    finally:
        for name in ("go", "end"):
            (gate.parent / f"{gate.name}.{name}").write_text("")
        path.unlink(missing_ok=True)
    return {"repeat": rep, "fresh_s": round(fresh, 3), "fresh_cluster_up_s":
            phases.get("cluster up"), "grow_s": round(grow, 3), "shrink_s": round(shrink, 3)}


def relay(work: Path, site: str, rep: int) -> dict:
    """A run with a service, relayed once mid-stage: the gap between the first job's end and
    the services answering in the successor, beside the successor's bring-up + BT."""
    gate = work / f"r{rep}" / "gate"
    gate.parent.mkdir(parents=True)
    path = stage_workflow(
        work, "benchrelay", gate, 2,
        "services:\n  - {name: svc, deployment: noop, replicas: 1, resources: {cpus: 0.5}}\n")
    path.write_text(path.read_text().replace(
        "walltime: 10m,", "walltime: 10m, relay: {max_jobs: 2},"))
    try:
        sub = hpcray.submit(path, site=site, run_root=work / "runs")
        wait_for(lambda: len(list(gate.parent.glob(f"{gate.name}.running-*"))) >= 1, 300,
                 "a task running")
        subprocess.run(["scancel", "--batch", "--signal=USR2", sub.job_id], check=True,
                       timeout=30)
        wait_for(lambda: job(sub.run_dir, "r1").get("services_ready") is not None, 400,
                 "the successor's services")
        (gate.parent / f"{gate.name}.go").write_text("")
        (gate.parent / f"{gate.name}.end").write_text("")
        st = hpcray.wait(sub.run_dir, timeout=300)
        if st.state != "completed":
            raise SystemExit(f"relay run: {st.state}: {st.error}")
        first, second = job(sub.run_dir, "main"), job(sub.run_dir, "r1")
    finally:
        for name in ("go", "end"):
            (gate.parent / f"{gate.name}.{name}").write_text("")
        path.unlink(missing_ok=True)
    return {"repeat": rep, "relay_gap_s": round(second["services_ready"] - first["ended"], 3),
            "successor_bringup_bt_s": round(second["services_ready"] - second["started"], 3)}


AUTOSCALE = """name: benchscale
allocation: {nodes: 1, walltime: 10m}
ray: {object_store_memory: 100000000, teardown_grace: 5}
services:
  - name: svc
    deployment: userclasses:Sleepy
    resources: {cpus: 0.25}
    autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2,
                  upscale_delay: 2, downscale_delay: 5}
"""


def _load(handle, stop: float, calls: list[tuple[float, float]], t0: float) -> None:
    while time.monotonic() < stop:
        start = time.perf_counter()
        handle.call("work", 0.05, timeout=60)  # a timeout or error ends the benchmark
        calls.append((time.time() - t0, time.perf_counter() - start))


def autoscale(work: Path, steps: list[tuple[int, float]]) -> list[dict]:
    """Clients in steps (count, seconds) against an autoscaling direct-path service (each
    call takes 50 ms in the replica) on the local site; every call's round trip, and the
    replicas taking requests over time (<run>/metrics/autoscale/svc.jsonl)."""
    from hpcray.services.autoscale import read_log

    path = FIXTURES / "services" / f"benchscale-{work.name}.yaml"  # beside userclasses.py
    path.write_text(AUTOSCALE)
    calls: list[tuple[float, float]] = []
    try:
        sub = hpcray.submit(path, site="local", run_root=work / "runs")
        wait_for(lambda: (read_json(sub.run_dir / "run.json", {}) or {}).get(
            "services", {}).get("svc", {}).get("state") == "ready", 300, "service ready")
        hpcray.connect(sub.run_dir)
        handle = hpcray.service("svc")
        t0 = time.time()
        for clients, seconds in steps:
            stop = time.monotonic() + seconds
            threads = [threading.Thread(target=_load, args=(handle, stop, calls, t0))
                       for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        scaled = read_log(sub.run_dir, "svc")
    finally:
        import ray

        ray.shutdown()  # before the cluster goes: a driver that outlives its GCS is killed
        path.unlink(missing_ok=True)
        if "sub" in locals():
            hpcray.cancel(sub.run_dir)
    rows = []
    end = max(t for t, _ in calls)
    for k in range(int(end // 2) + 1):
        window = sorted(rt for t, rt in calls if 2 * k <= t < 2 * (k + 1))
        at = t0 + 2 * (k + 1)
        live = [r for r in scaled if r["time"] <= at]
        rows.append({"t_s": 2 * (k + 1), "calls": len(window),
                     "p99_ms": round(1000 * window[int(0.99 * (len(window) - 1))], 2)
                     if window else None,
                     "replicas": live[-1]["live"] if live else 1})
    return rows


PAIRS = [("grow -> task on the new node", "grow_s", "fresh run -> first task", "fresh_s"),
         ("shrink of an idle worker job", "shrink_s", "fresh run -> first task", "fresh_s"),
         ("relay gap", "relay_gap_s", "successor bring-up + BT", "successor_bringup_bt_s")]


def measure(repeats: int, skip: set[str]) -> None:
    """Runs everything and writes elastic.csv and elastic_autoscale.csv."""
    import csv

    import testcluster
    from results_io import RESULTS

    if testcluster.missing_binaries() or os.geteuid() != 0:
        raise SystemExit("needs the test Slurm (root, slurm-wlm, munge)")
    work = Path(tempfile.mkdtemp(prefix="hpcray-elastic-"))
    root = Path(tempfile.mkdtemp(prefix="hse", dir="/tmp"))
    cluster = testcluster.start(root, nodes=2, cpus=2, gpus=0)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    os.environ["HPCRAY_SITES_PATH"] = str(FIXTURES / "sites")
    rows: list[dict] = []
    try:
        for rep in range(repeats):
            rows.append({"part": "grow/shrink", **grow_and_shrink(work, "testslurm", rep)})
            print(rows[-1], flush=True)
            if "relay" not in skip:
                rows.append({"part": "relay", **relay(work, "testslurm", rep)})
                print(rows[-1], flush=True)
    finally:
        testcluster.stop(root)
    scale_rows = [] if "autoscale" in skip else autoscale(work, [(1, 10), (16, 30), (1, 25)])
    subprocess.run(["rm", "-rf", str(work)], check=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, table in (("elastic", rows), ("elastic_autoscale", scale_rows)):
        if not table:
            continue
        with open(RESULTS / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table
                                                                     for k in r)))
            writer.writeheader()
            writer.writerows(table)


def report() -> None:
    """The tables (elastic.txt) and the picture (elastic.png) from the two CSVs."""
    import csv

    from results_io import RESULTS, pyplot
    from rich.console import Console
    from rich.table import Table

    def load(name: str) -> list[dict]:
        path = RESULTS / f"{name}.csv"
        if not path.exists():
            return []
        with open(path) as f:
            return [{k: (float(v) if v not in ("", None) and k != "part" else v or None)
                     for k, v in row.items()} for row in csv.DictReader(f)]

    rows, scale_rows = load("elastic"), load("elastic_autoscale")
    console = Console(record=True, width=100)

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    repeats = len({r["repeat"] for r in rows})
    table = Table(title=f"elastic runs on the test Slurm (median of {repeats})")
    for col in ("measure", "seconds", "against", "seconds ", "ratio"):
        table.add_column(col)
    shown = [p for p in PAIRS if median(p[1]) is not None]
    for label, key, base_label, base in shown:
        value, against = median(key), median(base)
        assert value is not None and against is not None
        table.add_row(label, f"{value:.2f}", base_label, f"{against:.2f}",
                      f"{value / against:.2f}x")
    console.print(table)
    if scale_rows:
        scale_table = Table(title="autoscaling (min 1, max 4 replicas, target 2 ongoing): "
                                  "1 -> 16 -> 1 clients, 2 s windows")
        for col in ("t (s)", "calls", "p99 (ms)", "replicas"):
            scale_table.add_column(col)
        for r in scale_rows:
            scale_table.add_row(f"{r['t_s']:.0f}", f"{r['calls']:.0f}", f"{r['p99_ms']}",
                                f"{r['replicas']:.0f}")
        console.print(scale_table)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    xs = list(range(len(shown)))
    axes[0].bar([x - 0.2 for x in xs], [median(p[1]) for p in shown], 0.4, label="measured")
    axes[0].bar([x + 0.2 for x in xs], [median(p[3]) for p in shown], 0.4, label="baseline")
    axes[0].set_xticks(xs, [p[0].split(" ->")[0].replace(" of an idle worker job", "")
                            for p in shown])
    axes[0].set_ylabel("seconds (median)")
    axes[0].set_title("grow, shrink, relay against a fresh bring-up")
    axes[0].legend()
    if scale_rows:
        t = [r["t_s"] for r in scale_rows]
        axes[1].step(t, [r["replicas"] for r in scale_rows], where="post", color="C2")
        axes[1].set_ylabel("replicas taking requests", color="C2")
        axes[1].set_ylim(0, 5)
        twin = axes[1].twinx()
        twin.plot(t, [r["p99_ms"] for r in scale_rows], "o-", color="C3", markersize=3)
        twin.set_ylabel("p99 round trip (ms)", color="C3")
        axes[1].set_xlabel("seconds: 1 client to 10 s, 16 to 40 s, then 1")
        axes[1].set_title("autoscaling on the direct path under a step load")
    fig.tight_layout()
    fig.savefig(RESULTS / "elastic.png", dpi=110)
    (RESULTS / "elastic.txt").write_text(console.export_text())
    console.print(f"wrote {RESULTS}/elastic.{{csv,png,txt}} and elastic_autoscale.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: relay, autoscale")
    parser.add_argument("--report-only", action="store_true",
                        help="only the tables and the picture, from the CSVs of the last run")
    args = parser.parse_args()
    if not args.report_only:
        measure(args.repeats, set(filter(None, args.skip.split(","))))
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
