"""Gene models from Ensembl-style GTF or GFF3 (plain or gzipped): transcripts with their
exons and coding parts, indexed by contig for overlap queries.

Kept as plain Python objects: a human gene model is ~250k transcripts, which this loads in
tens of seconds once per annotator replica, and the synthetic and test models in well under
a second.
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hpcray.pipelines.signature.errors import InputError

BIN = 10_000
UPSTREAM = 5_000  # VEP's default distance for up/downstream_gene_variant

_PARTS = {"exon", "CDS", "stop_codon"}
_GTF_ATTR = re.compile(r'\s*([^\s]+)\s+"?([^";]*)"?\s*;?')


@dataclass
class Transcript:
    id: str
    gene_id: str
    gene: str
    contig: str
    strand: str
    biotype: str = ""
    exons: list[tuple[int, int]] = field(default_factory=list)
    cds: list[tuple[int, int]] = field(default_factory=list)
    phase: int = 0  # of the CDS segment at the 5' end: bases before its first codon

    @property
    def start(self) -> int:
        return min(s for s, _ in self.exons)

    @property
    def end(self) -> int:
        return max(e for _, e in self.exons)

    @property
    def coding(self) -> bool:
        return bool(self.cds)


@dataclass
class GeneModel:
    path: str
    transcripts: list[Transcript]
    genes: dict[str, str]  # gene id -> gene name
    _bins: dict[str, dict[int, list[Transcript]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        bins: dict[str, dict[int, list[Transcript]]] = defaultdict(lambda: defaultdict(list))
        for t in self.transcripts:
            for b in range((t.start - UPSTREAM) // BIN, (t.end + UPSTREAM) // BIN + 1):
                bins[t.contig][b].append(t)
        self._bins = {c: dict(b) for c, b in bins.items()}

    @property
    def contigs(self) -> set[str]:
        return set(self._bins)

    @property
    def gene_names(self) -> set[str]:
        return set(self.genes.values())

    def near(self, contig: str, start: int, end: int) -> list[Transcript]:
        """Transcripts within UPSTREAM bases of [start, end]."""
        per_contig = self._bins.get(contig)
        if not per_contig:
            return []
        seen: dict[str, Transcript] = {}
        for b in range(start // BIN, end // BIN + 1):
            for t in per_contig.get(b, ()):
                if t.start - UPSTREAM <= end and t.end + UPSTREAM >= start:
                    seen[t.id] = t
        return list(seen.values())


def _open_text(path: Path):
    with path.open("rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _gff_attrs(text: str) -> dict[str, str]:
    attrs = {}
    for part in text.strip().split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            attrs[key.strip()] = value.strip()
    return attrs


def _gtf_attrs(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _GTF_ATTR.finditer(text)}


def load_gene_model(path: str | Path) -> GeneModel:
    """Read a GTF or GFF3 file (format from the attribute syntax of its first feature).
    Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: gene model not found")
    transcripts: dict[str, Transcript] = {}
    gene_names: dict[str, str] = {}
    # (transcript, type, start, end, line, phase)
    parts: list[tuple[str, str, int, int, int, str]] = []
    # GFF3: id -> (parent, contig, strand, biotype)
    pending_tx: dict[str, tuple[str, str, str, str]] = {}
    kind = None
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 9:
                raise InputError(f"{path}:{number}: a feature line has {len(cols)} "
                                 "tab-separated columns, GTF/GFF3 needs 9")
            contig, _, ftype, start_s, end_s, _, strand, _, attr_text = cols
            try:
                start, end = int(start_s), int(end_s)
            except ValueError:
                raise InputError(f"{path}:{number}: start/end {start_s!r}/{end_s!r} are not "
                                 "integers") from None
            if kind is None:
                kind = "gff3" if re.search(r"(^|;)\s*\w+=", attr_text) else "gtf"
            if kind == "gtf":
                attrs = _gtf_attrs(attr_text)
                tid, gid = attrs.get("transcript_id"), attrs.get("gene_id")
                if gid:
                    gene_names.setdefault(gid, attrs.get("gene_name") or gid)
                if not tid:
                    continue
                if tid not in transcripts:
                    transcripts[tid] = Transcript(
                        tid, gid or tid, attrs.get("gene_name") or gid or tid, contig, strand,
                        attrs.get("transcript_biotype") or attrs.get("gene_biotype") or "")
                if ftype in _PARTS:
                    parts.append((tid, ftype, start, end, number, cols[7]))
                continue
            attrs = _gff_attrs(attr_text)
            fid, parent = attrs.get("ID", ""), attrs.get("Parent", "")
            if ftype in _PARTS:
                for p in parent.split(","):
                    parts.append((p, ftype, start, end, number, cols[7]))
            elif fid and not parent:  # a gene (gene, ncRNA_gene, pseudogene, ...)
                gene_names[fid] = attrs.get("Name") or attrs.get("gene_id") or fid
            elif fid:  # a transcript when some exon or CDS names it as Parent
                pending_tx[fid] = (parent.split(",")[0], contig, strand,
                                   attrs.get("biotype", ""))
    used = {p[0] for p in parts}
    for fid, (parent, contig, strand, biotype) in pending_tx.items():
        if fid not in used:
            continue
        tid = fid.split(":", 1)[-1]
        transcripts[fid] = Transcript(tid, parent.split(":", 1)[-1],
                                      gene_names.get(parent, parent.split(":", 1)[-1]),
                                      contig, strand, biotype)
    five_prime: dict[str, tuple[int, str]] = {}
    for tid, ftype, start, end, number, phase in parts:
        t = transcripts.get(tid)
        if t is None:
            if kind == "gff3":
                raise InputError(f"{path}:{number}: {ftype} names Parent={tid!r}, which is "
                                 "not a transcript of this file")
            continue
        if ftype == "exon":
            t.exons.append((start, end))
        else:  # GTF's stop_codon lies outside its CDS; GFF3's CDS already holds it
            t.cds.append((start, end))
            edge = start if t.strand == "+" else -end
            if ftype == "CDS" and (tid not in five_prime or edge < five_prime[tid][0]):
                five_prime[tid] = (edge, phase)
    for tid, (_, phase) in five_prime.items():
        transcripts[tid].phase = int(phase) if phase in ("0", "1", "2") else 0
    usable = []
    for t in transcripts.values():
        if not t.exons:
            t.exons = list(t.cds)
        if t.exons:
            t.exons.sort()
            t.cds = sorted(set(t.cds))
            usable.append(t)
    if not usable:
        raise InputError(f"{path}: no transcript with exons found (is it a GTF or GFF3 "
                         "gene model?)")
    genes = {t.gene_id: t.gene for t in usable}
    return GeneModel(str(path), usable, genes)
