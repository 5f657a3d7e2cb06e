"""Signature detection: annotation throughput of the built-in annotator against `bcftools
csq` on the same file in the same run (rounds alternate which goes first), and the pipeline
end to end on 15 samples with 1, 2 and 4 annotator replicas.

    python benchmarks/signature.py [--variants 20000] [--rounds 3] [--e2e-variants 40000]
                                   [--replicas 1 2 4] [--skip-e2e]

The data is the synthetic study (hpcray.pipelines.signature.synthetic) at a larger size:
`--variants` background variants per sample for the throughput file (the highest-dose
sample), `--e2e-variants` per sample for the end-to-end runs (the planted excess scaled by
the same factor over the demo's, so the planted pathways stay detectable). End to end runs through
`hpcray submit` on the local site (no hypotheses stage: it needs no annotator and would only
add the LLM's time). Writes benchmarks/results/signature.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results_io import pyplot, save  # noqa: E402


def throughput(study, rounds: int, work: Path) -> list[dict]:
    from hpcray.pipelines.signature.builtin import BuiltinAnnotator
    from hpcray.pipelines.signature.validate import against_bcftools

    vcf = study.vcfs[-1]
    rows = []
    bcftools = shutil.which("bcftools")
    for r in range(rounds):
        order = ["built-in", "bcftools csq"] if r % 2 == 0 else ["bcftools csq", "built-in"]
        for tool in order:
            if tool == "built-in":
                start = time.perf_counter()
                annotator = BuiltinAnnotator(study.gtf, study.fasta)
                loaded = time.perf_counter()
                found, summary = annotator.annotate(vcf, "S15")
                n_rows = sum(1 for _ in found)
                end = time.perf_counter()
                variants = summary.variants
                rows.append({"part": "throughput", "round": r, "tool": tool,
                             "variants": variants, "rows": n_rows,
                             "seconds": end - start, "load_s": loaded - start,
                             "variants_per_s": variants / (end - start)})
            elif bcftools:
                start = time.perf_counter()
                subprocess.run([bcftools, "csq", "-l", "-f", str(study.fasta), "-g",
                                str(study.gff3), "-Ob", "-o", str(work / "csq.bcf"), "--force",
                                str(vcf)], check=True, capture_output=True)
                end = time.perf_counter()
                variants = rows[0]["variants"] if rows else 0
                rows.append({"part": "throughput", "round": r, "tool": tool,
                             "variants": variants, "rows": None,
                             "seconds": end - start, "load_s": None,
                             "variants_per_s": variants / (end - start)})
    if bcftools:
        agreement = against_bcftools(vcf, study.gff3, study.fasta, work).as_dict()
        for row in rows:
            row["agreement"] = agreement["share"]
    return rows


WORKFLOW = """
name: sigbench
allocation: {{nodes: 1, walltime: 30m}}
ray: {{object_store_memory: 200000000, teardown_grace: 5}}
services:
  - name: annotator
    deployment: hpcray.pipelines.signature.service:Annotator
    args: {{gene_model: {gtf}, fasta: {fasta}}}
    replicas: {replicas}
    resources: {{cpus: 0.25}}
driver:
  function: hpcray.pipelines.signature:run
  args: {{samples: {samples}, gene_sets: {gmt}, planted: {planted}, concurrency: {replicas}}}
"""


def end_to_end(study, replicas: list[int], work: Path) -> list[dict]:
    import hpcray

    rows = []
    for n in replicas:
        wf = work / f"e2e-{n}.yaml"
        wf.write_text(WORKFLOW.format(gtf=study.gtf, fasta=study.fasta, samples=study.samples,
                                      gmt=study.gmt, planted=study.root / "planted.txt",
                                      replicas=n))
        start = time.perf_counter()
        sub = hpcray.submit(wf, run_root=work / "runs")
        state = hpcray.wait(sub.run_dir, timeout=1800)
        total = time.perf_counter() - start
        if state.state != "completed":
            raise SystemExit(f"run with {n} replicas: {state.state}\n{hpcray.logs(sub.run_dir)}")
        out = sub.run_dir / "signature"
        summary = json.loads((out / "summary.json").read_text())
        timeline = json.loads((out / "timeline.json").read_text())
        ann = [t for t in timeline if t["stage"] == "annotate"]
        enr = [t for t in timeline if t["stage"] == "enrich"]
        t0 = min(t["started"] for t in ann)
        rows.append({"part": "end to end", "round": 0, "tool": f"{n} replicas",
                     "variants": summary["variants_annotated"], "rows": None,
                     "seconds": summary["wall_seconds"], "load_s": None,
                     "variants_per_s": summary["variants_annotated"] / summary["wall_seconds"],
                     "annotation_span_s": max(t["ended"] for t in ann) - t0,
                     "first_enrichment_s": min(t["started"] for t in enr) - t0,
                     "job_s": total, "recovered": len(summary["planted"]["recovered"]),
                     "other_sets": len(summary["planted"]["other"])})
        shutil.rmtree(out / "annotations", ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e-variants", type=int, default=40000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from hpcray.pipelines.signature.synthetic import generate

    console = Console(record=True, width=120)
    work = Path(tempfile.mkdtemp(prefix="sigbench-"))
    try:
        rows = throughput(generate(work / "small", background=args.variants), args.rounds, work)
        if not args.skip_e2e:
            # the planted excess grows with the background, so it stays detectable
            rows += end_to_end(generate(work / "e2e", background=args.e2e_variants,
                                        planted_rate=24.0 * args.e2e_variants / 60),
                               args.replicas, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"Annotation throughput, one file ({rows[0]['variants']} variants), "
                        f"median of {args.rounds} rounds")
    for col in ("tool", "variants/s", "seconds", "agreement with bcftools"):
        table.add_column(col, justify="right")
    med = {}
    for tool in ("built-in", "bcftools csq"):
        mine = [r for r in rows if r["part"] == "throughput" and r["tool"] == tool]
        if not mine:
            continue
        med[tool] = statistics.median(r["variants_per_s"] for r in mine)
        table.add_row(tool, f"{med[tool]:,.0f}",
                      f"{statistics.median(r['seconds'] for r in mine):.3f}",
                      f"{mine[0].get('agreement', float('nan')):.2%}")
    console.print(table)
    if len(med) == 2:
        ratio = med["built-in"] / med["bcftools csq"]
        console.print(f"built-in / bcftools csq throughput: {ratio:.3f}x")
    e2e = [r for r in rows if r["part"] == "end to end"]
    if e2e:
        table = Table(title=f"End to end, 15 samples, {e2e[0]['variants']} variants")
        for col in ("annotators", "pipeline (s)", "annotation span (s)", "first enrichment at (s)",
                    "job incl. start/stop (s)", "speed-up", "planted recovered", "other sets"):
            table.add_column(col, justify="right")
        base = e2e[0]["seconds"]
        for r in e2e:
            table.add_row(r["tool"], f"{r['seconds']:.1f}", f"{r['annotation_span_s']:.1f}",
                          f"{r['first_enrichment_s']:.1f}", f"{r['job_s']:.1f}",
                          f"{base / r['seconds']:.2f}x", f"{r['recovered']}/3",
                          str(r["other_sets"]))
        console.print(table)
    save("signature", rows, console, lambda path: draw(rows, path))
    return 0


def draw(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    e2e = [r for r in rows if r["part"] == "end to end"]
    fig, axes = plt.subplots(1, 2 if e2e else 1, figsize=(9 if e2e else 4.5, 3.4), squeeze=False)
    tools = ["built-in", "bcftools csq"]
    present = [t for t in tools if any(r["tool"] == t for r in rows)]
    axes[0][0].boxplot([[r["variants_per_s"] for r in rows if r["tool"] == t] for t in present])
    axes[0][0].set_xticks(range(1, len(present) + 1), present)
    axes[0][0].set_ylabel("variants / s")
    axes[0][0].set_yscale("log")
    axes[0][0].set_title("annotation throughput")
    if e2e:
        ax = axes[0][1]
        ax.bar([r["tool"] for r in e2e], [r["seconds"] for r in e2e], label="pipeline")
        ax.bar([r["tool"] for r in e2e], [r["annotation_span_s"] for r in e2e], label="annotation")
        ax.set_ylabel("seconds")
        ax.set_title("15 samples end to end")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
