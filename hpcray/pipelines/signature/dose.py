"""Dose response: per gene and per gene set, mutation burden (variants in the genes) against
dose, adjusted for time point, with each sample's total variants as exposure; a quasi-Poisson
regression per feature, its rate ratio per dose unit with a 95% interval, and the FDR."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hpcray.pipelines.signature.gmt import GeneSet
from hpcray.pipelines.signature.samples import Sample
from hpcray.pipelines.signature.stats import bh_fdr, poisson_dose_fit


@dataclass
class DoseResponse:
    level: str           # "gene" or "gene_set"
    feature: str
    variants: int        # over all samples
    rate_ratio: float    # per dose unit (Gy)
    ci_low: float
    ci_high: float
    slope: float
    p: float
    fdr: float
    dispersion: float
    burden_by_dose: str  # "dose:variants per 1000 background variants", readable unplotted

    def as_dict(self) -> dict:
        return asdict(self)


def features_of(counts: dict[str, dict[str, int]],
                sets: list[GeneSet]) -> dict[str, dict[str, dict[str, int]]]:
    """counts: sample -> gene -> variants. Returns level -> feature -> sample -> variants."""
    genes: dict[str, dict[str, int]] = {}
    for sample, per_gene in counts.items():
        for gene, n in per_gene.items():
            genes.setdefault(gene, {})[sample] = n
    pathways = {gs.name: {s: sum(per_gene.get(g, 0) for g in gs.genes)
                          for s, per_gene in counts.items()} for gs in sets}
    return {"gene": genes, "gene_set": pathways}


def dose_response(samples: list[Sample], counts: dict[str, dict[str, int]],
                  totals: dict[str, int], sets: list[GeneSet], *, min_variants: int = 3
                  ) -> list[DoseResponse]:
    """One row per gene and per gene set with at least `min_variants` variants."""
    used = [s for s in samples if s.name in counts]
    doses = sorted({s.dose for s in used})
    rows: list[DoseResponse] = []
    for level, features in features_of(counts, sets).items():
        level_rows = []
        for feature, per_sample in features.items():
            y = [per_sample.get(s.name, 0) for s in used]
            if sum(y) < min_variants:
                continue
            fit = poisson_dose_fit(y, [s.dose for s in used], [s.time for s in used],
                                   [totals[s.name] for s in used])
            if fit is None:
                continue
            burden = []
            for d in doses:
                at = [s for s in used if s.dose == d]
                rate = sum(per_sample.get(s.name, 0) for s in at) / max(
                    1, sum(totals[s.name] for s in at)) * 1000
                burden.append(f"{d:g}:{rate:.2f}")
            low, high = fit.interval(0.95)
            level_rows.append(DoseResponse(
                level, feature, sum(y), fit.rate_ratio, math.exp(low), math.exp(high),
                fit.slope, fit.p, 1.0, fit.dispersion, " ".join(burden)))
        for row, q in zip(level_rows, bh_fdr([r.p for r in level_rows]), strict=True):
            row.fdr = q
        rows += sorted(level_rows, key=lambda r: (r.p, r.feature))
    return rows
