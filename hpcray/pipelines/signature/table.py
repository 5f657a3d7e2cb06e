"""The annotation table every backend writes: one row per (sample, variant, ALT allele,
transcript), in SO terms, as tab-separated text with a header."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from hpcray.pipelines.signature.errors import InputError


@dataclass(frozen=True)
class Row:
    sample: str
    contig: str
    pos: int
    ref: str
    alt: str
    gene: str
    gene_id: str
    transcript: str
    consequence: str  # SO terms joined by '&', most severe first
    impact: str       # HIGH, MODERATE, LOW, MODIFIER


COLUMNS = [f.name for f in fields(Row)]


def write_rows(path: Path, rows: Iterable[Row]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    n = 0
    with tmp.open("w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(COLUMNS)
        for row in rows:
            out.writerow(astuple(row))
            n += 1
    tmp.replace(path)  # a reader never sees half a table
    return n


def read_rows(path: Path) -> Iterator[Row]:
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header != COLUMNS:
            raise InputError(f"{path}:1: not an annotation table (columns {header})")
        for number, cols in enumerate(reader, 2):
            if len(cols) != len(COLUMNS):
                raise InputError(f"{path}:{number}: {len(cols)} columns, expected {len(COLUMNS)}")
            yield Row(cols[0], cols[1], int(cols[2]), *cols[3:])


GENE_LEVEL = ("upstream_gene_variant", "downstream_gene_variant", "intergenic_variant")


def inside_gene(gene: str, top: str) -> bool:
    """Does a consequence (its most severe term `top`) hit the gene itself, not only its
    neighbourhood? The one rule for genes hit, in every backend and in the counts."""
    return bool(gene) and top not in GENE_LEVEL


def genes_hit(rows: Iterable[Row], impacts: set[str] | None = None) -> dict[str, int]:
    """Variants per gene (each variant counted once per gene), from rows inside genes;
    with `impacts`, only rows of those impact classes."""
    seen: dict[str, set[tuple[str, int, str, str]]] = {}
    for r in rows:
        if not inside_gene(r.gene, r.consequence.split("&")[0]):
            continue
        if impacts and r.impact not in impacts:
            continue
        seen.setdefault(r.gene, set()).add((r.contig, r.pos, r.ref, r.alt))
    return {g: len(v) for g, v in seen.items()}


def neutral_variants(rows: Iterable[Row]) -> int:
    """Variants outside every gene (intergenic, up/downstream only): the sample's background
    mutation rate, which a pathway's excess does not inflate. The dose-response exposure."""
    where: dict[tuple[str, int, str, str], bool] = {}
    for r in rows:
        key = (r.contig, r.pos, r.ref, r.alt)
        genic = inside_gene(r.gene, r.consequence.split("&")[0])
        where[key] = where.get(key, False) or genic
    return sum(1 for genic in where.values() if not genic)
