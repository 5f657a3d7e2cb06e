"""Gene sets in GMT format (MSigDB, Enrichr, GO/KEGG exports): name, description, genes,
tab-separated, one set per line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcray.pipelines.signature.errors import InputError


@dataclass(frozen=True)
class GeneSet:
    name: str
    description: str
    genes: frozenset[str]


def read_gmt(path: str | Path, *, min_size: int = 1) -> list[GeneSet]:
    """Every set of the file; a line without genes, or a name given twice, is an error
    naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: GMT file not found")
    sets: list[GeneSet] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.rstrip("\r\n").split("\t")
            name = cols[0].strip()
            if not name:
                raise InputError(f"{path}:{number}: a gene set with no name")
            genes = frozenset(g.strip() for g in cols[2:] if g.strip())
            if not genes:
                raise InputError(f"{path}:{number}: gene set {name!r} has no genes (GMT: "
                                 "name<TAB>description<TAB>gene<TAB>gene...)")
            if name in seen:
                raise InputError(f"{path}:{number}: gene set {name!r} already on line "
                                 f"{seen[name]}")
            seen[name] = number
            if len(genes) >= min_size:
                sets.append(GeneSet(name, cols[1].strip() if len(cols) > 1 else "", genes))
    if not sets:
        raise InputError(f"{path}: no gene sets")
    return sets
