"""The signature detection pipeline as a workflow driver (`function:
hpcray.pipelines.signature:run` in examples/signature.yaml), paper section II-B:

samples (VCFs) -> annotation service (concurrent, one call per sample) -> enrichment of each
sample as soon as its annotation is done (Ray tasks: the streaming edge) -> enrichment pooled
by dose -> dose response per gene and gene set -> hypotheses from the top gene sets (embedding
service + LLM service). Everything lands in <run>/signature/.

A sample that fails (a truncated VCF, an empty sample, contigs named unlike the gene model)
is reported in failed_samples.json with its reason; the others go on.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pydantic import Field

import hpcray
from hpcray.errors import HpcrayError
from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.service import run_path
from hpcray.spec.models import StrictModel

log = logging.getLogger("hpcray.signature")


class HypothesisOptions(StrictModel):
    embedding: str = Field("emb", description="The embedding service.")
    llm: str = Field("llm", description="The LLM service.")
    literature: str = Field(description="JSONL abstracts (text, id/pmid, title) or a folder "
                            "of .txt files.")
    top: int = Field(3, ge=1, description="Gene sets to write a hypothesis for.")
    passages: int = Field(3, ge=1)
    max_tokens: int = Field(96, ge=1)
    lexical_weight: float = Field(0.5, ge=0, le=1, description="Share of word overlap in the "
                                  "retrieval score (the rest: embedding cosine).")


class SignatureConfig(StrictModel):
    samples: str = Field(description="Sample sheet (sample, vcf, dose, time, column); "
                         "relative paths are relative to the run directory.")
    gene_sets: str = Field(description="GMT file.")
    planted: str | None = Field(None, description="A file naming the gene sets known to "
                                "respond (one per line, e.g. a synthetic study's "
                                "planted.txt): the summary says which were recovered.")
    annotator: str = Field("annotator", description="The annotation service.")
    concurrency: int = Field(4, ge=1, description="Samples being annotated at once.")
    annotate_timeout: float = Field(3600, gt=0, description="Seconds per sample.")
    impacts: list[str] | None = Field(None, description="Count only variants of these "
                                      "impacts (HIGH, MODERATE, LOW, MODIFIER); default all "
                                      "inside genes.")
    universe: list[str] | None = Field(None, description="Genes that could be hit; default: "
                                       "the annotator's gene model, else the gene sets' genes.")
    min_set_size: int = Field(5, ge=1)
    max_set_size: int = Field(500, ge=1)
    fdr: float = Field(0.05, gt=0, lt=1)
    min_variants: int = Field(3, ge=1, description="Features with fewer variants over all "
                              "samples are not fitted.")
    hypotheses: HypothesisOptions | None = None
    output: str | None = Field(None, description="Default <run>/signature.")


def _enrich_task(scope: str, table: str, gmt: list, universe: list[str], impacts: list[str] | None,
                 min_size: int, max_size: int) -> dict[str, Any]:
    from hpcray.pipelines.signature.enrichment import enrich
    from hpcray.pipelines.signature.table import genes_hit, neutral_variants, read_rows

    started = time.time()
    rows = list(read_rows(Path(table)))
    counts = genes_hit(rows, set(impacts) if impacts else None)
    found = enrich(scope, counts, gmt, set(universe), min_size, max_size)
    return {"scope": scope, "counts": counts, "neutral": neutral_variants(rows),
            "rows": [r.as_dict() for r in found], "started": started, "ended": time.time()}


def _pooled_task(scope: str, mutated: list[str], gmt: list, universe: list[str], min_size: int,
                 max_size: int) -> list[dict[str, Any]]:
    from hpcray.pipelines.signature.enrichment import enrich

    return [r.as_dict() for r in enrich(scope, mutated, gmt, set(universe), min_size, max_size)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        if rows:
            out = csv.DictWriter(handle, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)
    return path


def run(**kwargs: Any) -> dict[str, Any]:
    """The driver; returns the summary (also <run>/signature/summary.json)."""
    import ray

    from hpcray.pipelines.signature.gmt import read_gmt
    from hpcray.pipelines.signature.samples import read_samples

    config = SignatureConfig.model_validate(kwargs)
    run_dir = hpcray.context().run_dir or Path(".")
    out = run_path(config.output, run_dir) if config.output else run_dir / "signature"
    out.mkdir(parents=True, exist_ok=True)
    sheet, gmt_path = run_path(config.samples, run_dir), run_path(config.gene_sets, run_dir)
    planted: list[str] = []
    if config.planted:
        planted = [ln.strip() for ln in run_path(config.planted, run_dir).read_text().splitlines()
                   if ln.strip()]
    samples = read_samples(sheet)
    sets = read_gmt(gmt_path)
    corpus = None
    if config.hypotheses:
        from hpcray.pipelines.signature.hypotheses import read_corpus

        corpus = read_corpus(run_path(config.hypotheses.literature, run_dir))
    if not ray.is_initialized():
        ray.init()

    annotator = hpcray.service(config.annotator)
    universe = set(config.universe or [])
    if not universe:
        try:
            universe = set(annotator.call("genes", None).result)
        except HpcrayError:  # a remote-only annotator (VEP REST) has no gene model here
            universe = set()
        gmt_genes = set().union(*(s.genes for s in sets))
        universe = (universe & gmt_genes) if universe else gmt_genes
    if not universe:
        raise InputError(f"{gmt_path}: no gene of the gene sets is in the gene model; do "
                         "they use the same gene symbols?")
    log.info("%d samples, %d gene sets, universe of %d genes", len(samples), len(sets),
             len(universe))

    failures: dict[str, str] = _preflight(samples, annotator)
    gmt_ref, universe_list = ray.put(sets), sorted(universe)
    enrich_remote = ray.remote(num_cpus=1)(_enrich_task)
    timeline: list[dict[str, Any]] = []
    annotations: dict[str, dict[str, Any]] = {}
    enrich_refs: dict[Any, str] = {}
    started = time.time()

    def annotate(sample) -> dict[str, Any]:
        t0 = time.time()
        reply = annotator.call("annotate", {
            "vcf": str(sample.vcf), "sample": sample.name, "column": sample.column,
            "out": str(out / "annotations" / f"{sample.name}.tsv")},
            timeout=config.annotate_timeout)
        return {**reply.result, "replica": reply.replica, "started": t0, "ended": time.time()}

    total = len(samples)
    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        futures = {pool.submit(annotate, s): s for s in samples if s.name not in failures}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                sample = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - one bad sample loses only itself
                    failures[sample.name] = str(exc).splitlines()[0][:600]
                    log.error("sample %s failed: %s", sample.name, failures[sample.name])
                    continue
                annotations[sample.name] = result
                timeline.append({"sample": sample.name, "stage": "annotate",
                                 "started": result["started"], "ended": result["ended"],
                                 "where": result.get("replica")})
                ref = enrich_remote.remote(sample.name, result["out"], gmt_ref, universe_list,
                                           config.impacts, config.min_set_size,
                                           config.max_set_size)
                enrich_refs[ref] = sample.name
            hpcray.progress("annotate", len(annotations) + len(failures), total)

    per_sample_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    neutral: dict[str, int] = {}
    for ref, name in enrich_refs.items():
        try:
            got = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - one sample's enrichment loses only itself
            failures[name] = f"enrichment: {str(exc).splitlines()[0][:600]}"
            log.error("sample %s failed: %s", name, failures[name])
            continue
        counts[name] = got["counts"]
        neutral[name] = got["neutral"]
        per_sample_rows += got["rows"]
        timeline.append({"sample": name, "stage": "enrich", "started": got["started"],
                         "ended": got["ended"], "where": "ray"})
    if not counts:
        _write_json(out / "failed_samples.json", failures)
        raise InputError(f"every sample failed; see {out / 'failed_samples.json'}: "
                         + "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:3]))
    ok = [s for s in samples if s.name in counts]
    # exposure: variants outside genes (the background rate); all variants when a sample
    # has none there (a gene panel, an exome)
    totals = {name: neutral[name] or int(annotations[name]["variants"]) for name in counts}

    pooled_refs = []
    pooled_remote = ray.remote(num_cpus=1)(_pooled_task)
    for dose in sorted({s.dose for s in ok}):
        mutated = sorted(set().union(*(counts[s.name] for s in ok if s.dose == dose)))
        pooled_refs.append(pooled_remote.remote(f"dose={dose:g}", mutated, gmt_ref,
                                                universe_list, config.min_set_size,
                                                config.max_set_size))
    pooled_rows = [r for rows in ray.get(pooled_refs) for r in rows]

    from hpcray.pipelines.signature.dose import dose_response, features_of
    from hpcray.pipelines.signature.plots import dose_curves, heatmap

    dose_rows = dose_response(ok, counts, totals, sets, min_variants=config.min_variants)
    set_rows = [r for r in dose_rows if r.level == "gene_set"]
    gene_rows = [r for r in dose_rows if r.level == "gene"]
    _write_csv(out / "enrichment_samples.csv", per_sample_rows)
    _write_csv(out / "enrichment_by_dose.csv", pooled_rows)
    _write_csv(out / "dose_response_gene_sets.csv", [r.as_dict() for r in set_rows])
    _write_csv(out / "dose_response_genes.csv", [r.as_dict() for r in gene_rows])
    features = features_of(counts, sets)
    dose_curves(out / "dose_response.png", set_rows, features["gene_set"], ok, totals)
    heatmap(out / "heatmap.png", set_rows, features["gene_set"], ok, totals)

    significant, falling = dose_responsive(set_rows, config.fdr)
    summary: dict[str, Any] = {
        "samples": len(samples), "annotated": len(counts), "failed": failures,
        "universe": len(universe), "gene_sets_tested": len(set_rows),
        "dose_responsive_gene_sets": [
            {"gene_set": r.feature, "rate_ratio": round(r.rate_ratio, 3),
             "fdr": float(f"{r.fdr:.3g}")} for r in significant],
        "falling_gene_sets": [
            {"gene_set": r.feature, "rate_ratio": round(r.rate_ratio, 4),
             "fdr": float(f"{r.fdr:.3g}")} for r in falling],
        "variants_annotated": sum(int(a["variants"]) for a in annotations.values()),
        "annotation_seconds": round(sum(a["seconds"] for a in annotations.values()), 2),
        "wall_seconds": None,
    }
    if planted:
        found = {r.feature for r in significant}
        summary["planted"] = {"planted": planted, "recovered": sorted(found & set(planted)),
                              # any other set below the FDR threshold, in either direction
                              "other": sorted((found | {r.feature for r in falling})
                                              - set(planted))}
    if config.hypotheses and corpus is not None and significant:
        from hpcray.pipelines.signature.hypotheses import generate_hypotheses, write_hypotheses

        member = {s.name: s.genes for s in sets}
        top = [{"gene_set": r.feature, "rate_ratio": r.rate_ratio, "fdr": r.fdr,
                "genes": sorted(g for g in member[r.feature]
                                if any(g in counts[s] for s in counts))}
               for r in significant[:config.hypotheses.top]]
        h = config.hypotheses
        items = generate_hypotheses(top, corpus, embedding=h.embedding, llm=h.llm,
                                    passages=h.passages, max_tokens=h.max_tokens,
                                    lexical_weight=h.lexical_weight)
        write_hypotheses(out, items)
        summary["hypotheses"] = len(items)
    summary["wall_seconds"] = round(time.time() - started, 2)
    _write_json(out / "failed_samples.json", failures)
    _write_json(out / "timeline.json", timeline)
    _write_json(out / "summary.json", summary)
    _write_summary_md(out, summary, set_rows[:10], config.fdr)
    print((out / "summary.md").read_text() + f"\nResults: {out}", flush=True)
    return summary


def dose_responsive(set_rows: list, fdr: float) -> tuple[list, list]:
    """The gene sets the run reports: those whose burden rises with dose at FDR < `fdr`, and
    those whose burden falls (one rule for the summary and for the tests that judge it)."""
    return ([r for r in set_rows if r.fdr < fdr and r.rate_ratio > 1],
            [r for r in set_rows if r.fdr < fdr and r.rate_ratio < 1])


def _preflight(samples, annotator) -> dict[str, str]:
    """Each sample's VCF opened and its contig names checked against the annotator's gene
    model before any is sent, so the outcome does not depend on which instance (a local
    replica, a VEP-REST server) would annotate it. Returns the samples that fail, and why."""
    from hpcray.pipelines.signature.builtin import contig_mismatch
    from hpcray.pipelines.signature.vcf import contigs_used

    model = None
    try:
        model = annotator.call("contigs", None).result
    except HpcrayError as exc:  # no local replica with a gene model (VEP, VEP REST only)
        log.info("no contig check: %s", exc)
    failures = {}
    for sample in samples:
        try:
            used = contigs_used(sample.vcf)
        except InputError as exc:
            failures[sample.name] = str(exc)
            continue
        if model and not model["rename_contigs"]:
            problem = contig_mismatch(used, set(model["contigs"]))
            if problem:
                failures[sample.name] = (f"{sample.vcf}: contig names do not match "
                                         f"{model['gene_model']}: {problem}")
    for name, why in failures.items():
        log.error("sample %s not annotated: %s", name, why)
    return failures


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_summary_md(out: Path, summary: dict[str, Any], top, fdr: float) -> None:
    lines = ["# Signature detection", "",
             f"{summary['annotated']} of {summary['samples']} samples annotated "
             f"({summary['variants_annotated']} variants); {summary['gene_sets_tested']} gene "
             f"sets tested against a universe of {summary['universe']} genes.", ""]
    if summary["failed"]:
        lines += ["Failed samples:", ""]
        lines += [f"- {k}: {v}" for k, v in summary["failed"].items()] + [""]
    lines += [f"Dose-responsive gene sets (FDR < {fdr:g}, burden rising with dose):", ""]
    lines += [f"- {g['gene_set']}: x{g['rate_ratio']} per Gy, FDR {g['fdr']}"
              for g in summary["dose_responsive_gene_sets"]] or ["- none"]
    if summary["falling_gene_sets"]:
        lines += ["", f"Gene sets whose burden falls with dose (FDR < {fdr:g}):", ""]
        lines += [f"- {g['gene_set']}: x{g['rate_ratio']} per Gy, FDR {g['fdr']}"
                  for g in summary["falling_gene_sets"]]
    if "planted" in summary:
        p = summary["planted"]
        lines += ["", f"Planted gene sets recovered: {len(p['recovered'])} of "
                      f"{len(p['planted'])}; other gene sets below the threshold: "
                      f"{', '.join(p['other']) or 'none'}."]
    lines += ["", "| gene set | variants | rate ratio / Gy | 95% CI | FDR |",
              "|---|---|---|---|---|"]
    lines += [f"| {r.feature} | {r.variants} | {r.rate_ratio:.3f} | {r.ci_low:.2f}-{r.ci_high:.2f} "
              f"| {r.fdr:.3g} |" for r in top]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
