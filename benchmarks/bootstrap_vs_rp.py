"""The paper's experiment 1 side by side with RADICAL-Pilot: N NOOP services from submit to
answering, their phases, the driver's start, the NOOP round trip and the teardown.

    bash benchmarks/rp_env.sh        # once: RADICAL-Pilot in its own venv
    python benchmarks/bootstrap_vs_rp.py [--services 1 2 4 8 16 32] [--rounds 2]

Each round runs, for every N, an hpcray run on the local site (N services `noop`, one
replica each, `cpus: 0.05`, a driver function calling one of them --calls times) and then
RADICAL-Pilot's `local.localhost` pilot with N service tasks (benchmarks/rp_services.py, a
ZeroMQ echo each, readied by `info_pattern`), alternating, so both see the same machine.

hpcray's times are from `hpcray.submit` (run.json): cluster up (all nodes joined), Serve up,
services ready (every replica answered), driver started (its function's first line) and
the teardown (teardown_start -> teardown_end). RP's: pilot active, services ready (every
address known) and session close. Writes benchmarks/results/bootstrap_vs_rp.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from results_io import save  # noqa: E402

import hpcray  # noqa: E402

RP_PYTHON = REPO / "benchmarks" / ".rp-venv" / "bin" / "python"


def hpcray_round(work: Path, n: int, calls: int) -> dict:
    wf = work / f"noop{n}.yaml"
    services = "".join(f"  - {{name: s{i}, deployment: noop, resources: {{cpus: 0.05}}}}\n"
                       for i in range(n))
    wf.write_text(f"name: noop{n}\nallocation: {{nodes: 1, walltime: 20m}}\n"
                  "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                  f"services:\n{services}"
                  f"driver: {{function: 'noop_rt:main', cwd: '{REPO / 'benchmarks'}', "
                  f"args: {{calls: {calls}}}}}\n")
    sub = hpcray.submit(wf, run_root=work / "runs")
    st = hpcray.wait(sub.run_dir, timeout=900)
    if st.state != "completed":
        raise SystemExit(f"hpcray N={n}: {st.state}: {st.error}")
    times = st.times
    driver = json.loads((sub.run_dir / "driver-result.json").read_text())
    since = {k: times[e] - times["submitted"] for k, e in (
        ("cluster up", "all_joined"), ("Serve up", "serve_up"),
        ("services ready", "services_ready"), ("driver started", "driver_entry"))}
    return {"system": "hpcray", "services": n, **since,
            "ready to driver": times["driver_entry"] - times["services_ready"],
            "teardown": times["teardown_end"] - times["teardown_start"],
            "rt_p50_ms": driver["rt_p50_ms"], "rt_p99_ms": driver["rt_p99_ms"]}


def rp_round(work: Path, n: int, calls: int) -> dict:
    out = work / f"rp{n}.json"
    proc = subprocess.run([str(RP_PYTHON), str(REPO / "benchmarks" / "rp_services.py"),
                           "--services", str(n), "--calls", str(calls), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"RADICAL-Pilot N={n} failed:\n{proc.stderr[-2000:]}")
    r = json.loads(out.read_text())
    return {"system": f"radical.pilot {r['version']}", "services": n,
            "cluster up": r["pilot_active"], "services ready": r["services_ready"],
            "teardown": r["teardown"], "rt_p50_ms": r["rt_p50_ms"], "rt_p99_ms": r["rt_p99_ms"],
            "leftover_processes": r.get("leftover_processes", 0)}


def measure(args: argparse.Namespace, console) -> list[dict]:
    """Alternating rounds: for each N, hpcray then RADICAL-Pilot."""
    from rich.progress import Progress

    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcray-vs-rp-") as tmp, \
            Progress(console=console, transient=True) as bar:
        task = bar.add_task("hpcray and RADICAL-Pilot, alternating",
                            total=2 * args.rounds * len(args.services))
        for rnd in range(args.rounds):
            for n in args.services:
                for side in (hpcray_round, rp_round):
                    t0 = time.time()
                    row = side(Path(tmp), n, args.calls)
                    rows.append({"round": rnd, **row, "wall": time.time() - t0})
                    bar.advance(task)
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
            for r in rows]


def read_rows() -> list[dict]:
    """The last run's rows, numbers as numbers (for --from-csv)."""
    import csv

    from results_io import RESULTS

    def value(text: str) -> object:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text or None

    with open(RESULTS / "bootstrap_vs_rp.csv", newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--from-csv", action="store_true",
                        help="no runs: the table and PNG again from the last CSV")
    args = parser.parse_args()
    if not args.from_csv and not RP_PYTHON.exists():
        raise SystemExit(f"no {RP_PYTHON}: run `bash benchmarks/rp_env.sh` first")

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=160)
    if args.from_csv:
        rows = read_rows()
        args.services = sorted({r["services"] for r in rows})
    else:
        rows = measure(args, console)

    table = Table(title="N NOOP services from submit, seconds: median over rounds (min-max); "
                        "ratio = hpcray / RADICAL-Pilot, services ready")
    for col in ("N", "system", "cluster up", "Serve up", "services ready", "driver started",
                "teardown", "RT p50 ms", "ratio"):
        table.add_column(col, justify="right")

    def cell(sel: list[dict], key: str) -> str:
        vals = [r[key] for r in sel if r.get(key) is not None]
        if not vals:
            return "-"
        return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"

    medians: dict[tuple[str, int], dict[str, float]] = {}
    for n in args.services:
        chosen = {system: [r for r in rows if r["services"] == n
                           and r["system"].startswith(system)]
                  for system in ("hpcray", "radical.pilot")}
        for system, sel in chosen.items():
            medians[system, n] = {k: statistics.median(r[k] for r in sel) for k in (
                "cluster up", "services ready", "teardown", "rt_p50_ms")}
        ratio = medians["hpcray", n]["services ready"] / medians["radical.pilot", n][
            "services ready"]
        for system, sel in chosen.items():
            table.add_row(str(n), sel[0]["system"], cell(sel, "cluster up"),
                          cell(sel, "Serve up"), cell(sel, "services ready"),
                          cell(sel, "driver started"), cell(sel, "teardown"),
                          cell(sel, "rt_p50_ms"),
                          f"{ratio:.2f}" if system == "hpcray" else "")
    console.print(table)
    hp = [r for r in rows if r["system"] == "hpcray"]
    console.print(f"services ready -> driver's first line: median "
                  f"{statistics.median(r['ready to driver'] for r in hp):.3f} s, max "
                  f"{max(r['ready to driver'] for r in hp):.3f} s over {len(hp)} hpcray runs")

    def draw(path: Path) -> None:
        from hpcray.metrics.plotting import pyplot

        plt = pyplot()
        fig, (up, down) = plt.subplots(1, 2, figsize=(11, 4.2),
                                       gridspec_kw={"width_ratios": [3, 2]})
        labels, x = [], 0.0
        for n in args.services:
            for system, colours in (("hpcray", ("tab:blue", "tab:orange")),
                                    ("radical.pilot", ("tab:gray", "tab:green"))):
                m = medians[system, n]
                up.bar(x, m["cluster up"], color=colours[0])
                up.bar(x, m["services ready"] - m["cluster up"], bottom=m["cluster up"],
                       color=colours[1])
                down.bar(x, m["teardown"], color=colours[0])
                labels.append((x, f"{n}\n{'hpc' if system == 'hpcray' else 'RP'}"))
                x += 1
            x += 0.6
        for ax in (up, down):
            ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=7)
        up.set_ylabel("seconds from submit (median)")
        up.set_title("submit -> N NOOP services answering")
        from matplotlib.patches import Patch

        up.legend(handles=[Patch(color="tab:blue", label="hpcray: cluster up"),
                           Patch(color="tab:orange", label="hpcray: services"),
                           Patch(color="tab:gray", label="RP: pilot active"),
                           Patch(color="tab:green", label="RP: services")], fontsize=7)
        down.set_title("teardown")
        down.set_ylabel("seconds (median)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    save("bootstrap_vs_rp", rows, console, draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
