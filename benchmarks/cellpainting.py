"""Cell painting: is the data path ever the bottleneck, and how many trials per hour?

    python benchmarks/cellpainting.py [--workers 2] [--concurrent 2] [--batches 40]

Run 1 (one hpcray run on the local site, a synthetic plate): images per second the
preprocessing pool delivers when only it runs, the training consumes when its batches are
already in memory, and a trainer fed by the stream achieves, with the share of its time spent
waiting on data. The target: delivered >= 1.1x consumed. Run 2: the pipeline of
examples/cellpainting.yaml end to end; trials per hour of its search.
Writes benchmarks/results/cellpainting.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402
from benchmarks.results_io import pyplot, save  # noqa: E402
from hpcray.pipelines.cellpainting.synthetic import write_plate  # noqa: E402


def _run(work: Path, name: str, driver: str) -> Path:
    wf = work / f"{name}.yaml"
    wf.write_text(f"name: {name}\nallocation: {{nodes: 1, walltime: 30m}}\n"
                  f"ray: {{object_store_memory: 300000000, teardown_grace: 5}}\n{driver}")
    sub = hpcray.submit(wf, run_root=work / "runs")
    st = hpcray.wait(sub.run_dir, timeout=1800)
    if st.state != "completed":
        raise SystemExit(f"{name}: {st.state}: {st.error}\n{hpcray.logs(sub.run_dir)[-3000:]}")
    return sub.run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="preprocessing actors")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40, help="per trainer")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=110)
    with tempfile.TemporaryDirectory(prefix="hpcray-cp-") as tmp:
        work = Path(tmp)
        (work / "cellpainting_tasks.py").write_text(
            (REPO / "benchmarks" / "cellpainting_tasks.py").read_text())
        plate = write_plate(work / "plate", fields_per_dose=48, size=96)
        console.print("run 1: data path ...")
        params = {"csv": str(plate), "workers": args.workers, "concurrent": args.concurrent,
                  "batch_size": args.batch_size, "batches": args.batches, "resize": 64,
                  "crop": 48, "prefetch": 4}
        run = _run(work, "cpdata", "driver:\n  function: cellpainting_tasks:data_path\n"
                   f"  args: {json.dumps(params)}\n")
        data = json.loads((run / "driver-result.json").read_text())
        console.print("run 2: the example pipeline ...")
        example = (REPO / "examples" / "cellpainting.yaml").read_text()
        driver = example[example.index("driver:"):]
        run = _run(work, "cppipeline", driver)
        summary = json.loads((run / "cellpainting" / "summary.json").read_text())
    trials_per_hour = len(summary["trials"]) / summary["search_s"] * 3600
    ratio = data["delivered"] / data["consumed"]
    table = Table(title="Cell painting data path and search (same machine, one run each)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("preprocessing delivers (img/s)", f"{data['delivered']:.0f}"),
            ("training consumes, data in memory (img/s)", f"{data['consumed']:.0f}"),
            ("delivered / consumed", f"{ratio:.2f}x"),
            ("training fed by the stream (img/s)", f"{data['streamed']:.0f}"),
            ("time trainers wait on data (max)", f"{100 * data['wait_fraction']:.1f}%"),
            ("search: trials / time", f"{len(summary['trials'])} / {summary['search_s']:.0f} s"),
            ("trials per hour", f"{trials_per_hour:.0f}"),
            ("held-out accuracy (chance)",
             f"{summary['test_accuracy']:.3f} ({summary['chance']:.2f})")]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"{args.workers} preprocessing actors, {args.concurrent} trainers, batch "
                  f"{args.batch_size}, 48x48 crops. Target: delivered >= 1.1x consumed.")
    record = {**data, "ratio": ratio, "trials": len(summary["trials"]),
              "search_s": summary["search_s"], "trials_per_hour": trials_per_hour,
              "test_accuracy": summary["test_accuracy"]}
    save("cellpainting", [record], console, lambda path: plot(data, path))
    return 0


def plot(data: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ["preprocessing\ndelivers", "training\nconsumes", "training fed\nby the stream"]
    values = [data["delivered"], data["consumed"], data["streamed"]]
    ax.bar(names, values, color=["tab:green", "tab:blue", "tab:orange"])
    ax.axhline(1.1 * data["consumed"], color="gray", linestyle="--", label="1.1x consumed")
    ax.set_ylabel("images per second")
    ax.set_title("Cell painting data path (same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
