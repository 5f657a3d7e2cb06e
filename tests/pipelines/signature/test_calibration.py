"""The signature pipeline's claim about the gene sets it reports, judged the way an FDR is
judged: over many synthetic studies, not on one seed that happens to have no chance hit.

Each study is the one `synthetic.generate(seed=...)` writes (the end-to-end test's study
is seed 2), annotated by the built-in annotator a local replica runs, reduced by the body of
the pipeline's per-sample Ray task (`_enrich_task`), then judged by the code the driver runs:
`dose_response` and `dose_responsive` for the dose response, `_pooled_task` for the
enrichment pooled by dose. Nothing of Ray is needed for that: a study costs 3 to 5 s here.
"""

from __future__ import annotations

import math
import shutil

import pytest

from hpcray.pipelines.signature.dose import dose_response
from hpcray.pipelines.signature.gmt import read_gmt
from hpcray.pipelines.signature.pipeline import (
    SignatureConfig,
    _enrich_task,
    _pooled_task,
    dose_responsive,
)
from hpcray.pipelines.signature.samples import read_samples
from hpcray.pipelines.signature.service import Annotator, annotate_with
from hpcray.pipelines.signature.synthetic import generate

DEFAULTS = {k: f.default for k, f in SignatureConfig.model_fields.items()}
Q = DEFAULTS["fdr"]        # the FDR the pipeline reports at (0.05)
SEEDS = range(1, 31)       # every seed from 1, none left out
ALPHA = 1e-3               # how often a pipeline whose FDR is exactly Q fails this test


def kl(p: float, q: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(p) from Bernoulli(q)."""
    inner = p * math.log(p / q) if p > 0 else 0.0
    return inner + ((1 - p) * math.log((1 - p) / (1 - q)) if p < 1 else 0.0)


def chernoff_limit(q: float, n: int, alpha: float) -> float:
    """The x > q with n * kl(x, q) = ln(1/alpha). For n independent values in [0, 1] whose
    mean is at most q, P(their average >= x) <= exp(-n * kl(x, q)) = alpha (Hoeffding 1963,
    Theorem 1), whatever their distribution within [0, 1]."""
    lo, hi, target = q, 1.0, math.log(1 / alpha) / n
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(mid, q) < target else (lo, mid)
    return hi


def test_the_limit_is_the_chernoff_bound():
    x = chernoff_limit(0.05, 60, 1e-3)
    assert 60 * kl(x, 0.05) == pytest.approx(math.log(1000), rel=1e-9)
    assert 0.17 < x < 0.19  # about 3.6 times the FDR: what 60 studies can resolve
    assert chernoff_limit(0.05, 600, 1e-3) < 0.09  # more studies, a tighter limit


def false_discovery_proportions(root, seed: int) -> tuple[float, float, set[str]]:
    """One study: the false discovery proportion among the gene sets reported as dose
    responsive (rising or falling, as the summary's `other`), the same for the enrichment
    pooled over the samples of the highest dose, and the planted sets reported."""
    study = generate(root, seed=seed)
    annotator = Annotator(gene_model=str(study.gtf), fasta=str(study.fasta)).backend
    samples, sets = read_samples(study.samples), read_gmt(study.gmt)
    # the driver's universe: the gene model's genes that some gene set names
    universe = sorted(set(annotator.impl.model.gene_names) & set().union(*(s.genes for s in sets)))
    lo, hi = DEFAULTS["min_set_size"], DEFAULTS["max_set_size"]
    counts, totals = {}, {}
    for s in samples:
        got = annotate_with(annotator, {"vcf": str(s.vcf), "sample": s.name,
                                        "out": str(root / "annotations" / f"{s.name}.tsv")})
        enriched = _enrich_task(s.name, got["out"], sets, universe, None, lo, hi)
        counts[s.name] = enriched["counts"]
        totals[s.name] = enriched["neutral"] or int(got["variants"])  # as the driver does
    rows = dose_response(samples, counts, totals, sets, min_variants=DEFAULTS["min_variants"])
    rising, falling = dose_responsive([r for r in rows if r.level == "gene_set"], Q)
    reported = {r.feature for r in rising + falling}
    top = max(s.dose for s in samples)
    mutated = sorted(set().union(*(counts[s.name] for s in samples if s.dose == top)))
    pooled = {r["gene_set"] for r in _pooled_task(f"dose={top:g}", mutated, sets, universe,
                                                  lo, hi) if r["fdr"] < Q}
    planted = set(study.planted)

    def fdp(found: set[str]) -> float:
        return len(found - planted) / len(found) if found else 0.0
    return fdp(reported), fdp(pooled), {r.feature for r in rising} & planted


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_reported_gene_sets_keep_the_false_discovery_rate_over_30_studies(tmp_path):
    """The bound: the pipeline reports gene sets at Benjamini-Hochberg FDR < Q (0.05), which
    claims E[FDP] <= Q, FDP being a study's false discoveries over its discoveries (0 when
    none): here the 37 background sets, which have no dose effect, against the 3 planted.

    The tolerance: the studies of seeds 1-30 are independent, and each FDP lies in [0, 1].
    If E[FDP] <= Q, the average of 30 exceeds `chernoff_limit(Q, 30, ALPHA)` (0.25) with
    probability at most ALPHA = 0.001, by Hoeffding's bound, which holds for any
    distribution on [0, 1]; so the limit follows from the number of studies and the
    false-alarm rate chosen beforehand, not from what these seeds gave. It catches a
    pipeline without the BH step (about 1.9 of 37 null sets pass p < 0.05 in each study, an
    FDP near 0.4), not an FDR of 0.08: that would take some 850 studies. The same holds
    for the enrichment of the highest dose pooled (hypergeometric, BH over the sets), which
    the end-to-end test used to assert found the planted sets and nothing else.

    Not passed by reporting nothing: the planted sets, whose burden rises by design, are
    found in at least 90% of the (study, set) pairs (found in all of seeds 1-12 when the
    generator was tuned, docs/pipelines/signature.md)."""
    dose, pooled, found = [], [], 0
    for seed in SEEDS:
        root = tmp_path / f"seed{seed}"
        d, p, planted = false_discovery_proportions(root, seed)
        shutil.rmtree(root)
        dose.append(d)
        pooled.append(p)
        found += len(planted)
    limit = chernoff_limit(Q, len(SEEDS), ALPHA)
    mean_dose, mean_pooled = sum(dose) / len(dose), sum(pooled) / len(pooled)
    detail = (f"mean FDP {mean_dose:.3f} (dose response), {mean_pooled:.3f} (pooled); "
              f"limit {limit:.3f}; FDP per seed {dict(zip(SEEDS, dose, strict=True))}")
    print(f"signature calibration: mean FDP {mean_dose:.4f} (dose response), {mean_pooled:.4f} "
          f"(pooled) over {len(SEEDS)} studies, limit {limit:.3f}; planted sets found "
          f"{found} of {3 * len(SEEDS)}")  # docs/pipelines/signature.md
    assert mean_dose <= limit, detail
    assert mean_pooled <= limit, detail
    assert found >= 0.9 * 3 * len(SEEDS), (found, detail)
