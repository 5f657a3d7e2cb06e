"""Which gene sets hold more mutated genes than chance: per sample, and pooled over the
samples of each dose. Over-representation by the hypergeometric test (Fisher's exact,
one-sided) within a universe of the genes both the gene model and the gene sets know,
then the Benjamini-Hochberg FDR over the sets tested."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from hpcray.pipelines.signature.gmt import GeneSet
from hpcray.pipelines.signature.stats import bh_fdr, hypergeom_sf


@dataclass
class Enrichment:
    scope: str          # a sample name, or "dose=<d>" for a pool
    gene_set: str
    set_size: int       # genes of the set in the universe
    hits: int           # mutated genes in the universe
    overlap: int
    expected: float
    fold: float
    p: float
    fdr: float
    genes: str          # the overlapping genes, comma-separated

    def as_dict(self) -> dict:
        return asdict(self)


def enrich(scope: str, mutated: Iterable[str], sets: list[GeneSet], universe: set[str],
           min_size: int = 5, max_size: int = 500) -> list[Enrichment]:
    hit = set(mutated) & universe
    n_universe = len(universe)
    rows: list[Enrichment] = []
    for gs in sets:
        members = gs.genes & universe
        if not (min_size <= len(members) <= max_size):
            continue
        overlap = members & hit
        expected = len(members) * len(hit) / n_universe if n_universe else 0.0
        rows.append(Enrichment(
            scope, gs.name, len(members), len(hit), len(overlap), expected,
            (len(overlap) / expected) if expected else 0.0,
            hypergeom_sf(len(overlap), n_universe, len(members), len(hit)), 1.0,
            ",".join(sorted(overlap))))
    for row, q in zip(rows, bh_fdr([r.p for r in rows]), strict=True):
        row.fdr = q
    rows.sort(key=lambda r: (r.p, r.gene_set))
    return rows
