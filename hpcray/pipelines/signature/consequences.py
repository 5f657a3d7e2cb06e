"""Variant consequences on one transcript, in Sequence Ontology terms (as VEP writes them):
region classes from the gene model alone, coding consequences with the reference sequence.

Splice rules follow bcftools csq and VEP: splice donor/acceptor are the intron's first/last
2 bases; splice region is 3-8 bases into the intron or 1-3 bases into the exon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hpcray.pipelines.signature.genemodel import UPSTREAM, Transcript

IMPACT = {
    "splice_acceptor_variant": "HIGH", "splice_donor_variant": "HIGH", "stop_gained": "HIGH",
    "frameshift_variant": "HIGH", "stop_lost": "HIGH", "start_lost": "HIGH",
    "inframe_insertion": "MODERATE", "inframe_deletion": "MODERATE",
    "missense_variant": "MODERATE", "splice_region_variant": "LOW",
    "synonymous_variant": "LOW", "stop_retained_variant": "LOW",
    "5_prime_UTR_variant": "MODIFIER", "3_prime_UTR_variant": "MODIFIER",
    "non_coding_transcript_exon_variant": "MODIFIER", "intron_variant": "MODIFIER",
    "upstream_gene_variant": "MODIFIER", "downstream_gene_variant": "MODIFIER",
    "intergenic_variant": "MODIFIER", "coding_sequence_variant": "MODERATE",
}
SEVERITY = list(IMPACT)  # most severe first
CODING = {"missense_variant", "synonymous_variant", "stop_gained", "stop_lost", "start_lost",
          "frameshift_variant", "inframe_insertion", "inframe_deletion",
          "stop_retained_variant", "coding_sequence_variant"}

_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {a + b + c: _AMINO[16 * i + 4 * j + k]
               for i, a in enumerate(_BASES) for j, b in enumerate(_BASES)
               for k, c in enumerate(_BASES)}
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def revcomp(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


class Reference(Protocol):
    def fetch(self, contig: str, start: int, end: int) -> str: ...  # 0-based, half-open


@dataclass(frozen=True)
class Allele:
    """One ALT allele, trimmed of the bases it shares with REF: `ref` covers genomic
    [start, start+len(ref)-1]; an insertion has ref '' and sits before `start`."""
    pos: int
    ref: str
    alt: str

    @classmethod
    def trimmed(cls, pos: int, ref: str, alt: str) -> Allele:
        while ref and alt and ref[-1] == alt[-1] and len(ref) + len(alt) > 2:
            ref, alt = ref[:-1], alt[:-1]
        while ref and alt and ref[0] == alt[0]:
            ref, alt, pos = ref[1:], alt[1:], pos + 1
        return cls(pos, ref.upper(), alt.upper())

    @property
    def start(self) -> int:
        return self.pos

    @property
    def end(self) -> int:  # last affected base; an insertion: start - 1 (empty span)
        return self.pos + len(self.ref) - 1


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    if a1 < a0:  # insertion between a1 and a0: inside b when both flanks are
        return b0 <= a1 and a0 <= b1
    return a0 <= b1 and b0 <= a1


def _splice_region(s: int, e: int, zone: tuple[int, int], parts: list[tuple[int, int]]) -> bool:
    """An allele in the splice region: any base of it in `parts`; an insertion, when one
    flank is in `parts` and the other still in `zone` (the region with its exon), as
    bcftools csq decides."""
    if e >= s:
        return any(_overlaps(s, e, a, b) for a, b in parts)
    inside = [any(a <= f <= b for a, b in parts) for f in (e, s)]
    return any(inside) and all(zone[0] <= f <= zone[1] for f in (e, s))


def region_terms(t: Transcript, allele: Allele) -> set[str]:
    """Everything but the coding effect: UTR, exon, intron, splice, up/downstream
    (`coding_sequence_variant` where the allele touches the CDS; the coding effect replaces
    it when there is a reference). Empty: the transcript is too far away."""
    s, e = allele.start, allele.end
    if not allele.ref and not allele.alt:
        return set()  # REF == ALT: nothing changes
    lo, hi = (s, e) if e >= s else (e, s)
    if hi < t.start or lo > t.end:
        before = hi < t.start
        if t.start - UPSTREAM <= hi and lo <= t.end + UPSTREAM:
            five_prime = before if t.strand == "+" else not before
            return {"upstream_gene_variant" if five_prime else "downstream_gene_variant"}
        return set()
    terms: set[str] = set()
    exons = t.exons
    in_exon = any(_overlaps(s, e, a, b) for a, b in exons)
    for left, right in zip(exons, exons[1:], strict=False):  # introns: left[1]+1 .. right[0]-1
        i0, i1 = left[1] + 1, right[0] - 1
        if i1 < i0:
            continue
        five_end = (i0, i0 + 1) if t.strand == "+" else (i1 - 1, i1)
        three_end = (i1 - 1, i1) if t.strand == "+" else (i0, i0 + 1)
        # an insertion between the left exon and the intron's first base moves that
        # dinucleotide away from the exon (bcftools csq counts it; the mirror case at the
        # intron's end it does not)
        at_start = e < s and e == left[1] and s == i0
        if _overlaps(s, e, *five_end) or (at_start and five_end[0] == i0):
            terms.add("splice_donor_variant")
        if _overlaps(s, e, *three_end) or (at_start and three_end[0] == i0):
            terms.add("splice_acceptor_variant")
        region = (_splice_region(s, e, (left[0], min(i0 + 7, i1)),
                                 [(max(left[1] - 2, left[0]), left[1]), (i0 + 2, min(i0 + 7, i1))])
                  or _splice_region(s, e, (max(i1 - 7, i0), right[1]),
                                    [(max(i1 - 7, i0), i1 - 2),
                                     (right[0], min(right[0] + 2, right[1]))]))
        if region:
            terms.add("splice_region_variant")
        if _overlaps(s, e, i0, i1) and not in_exon:
            terms.add("intron_variant")
    # an insertion (before genomic base s) is coding when s is, as bcftools csq counts it
    touches_cds = t.coding and any((a <= s <= b) if e < s else _overlaps(s, e, a, b)
                                   for a, b in t.cds)
    if in_exon or touches_cds:
        if not t.coding:
            terms.add("non_coding_transcript_exon_variant")
        else:
            c0, c1 = t.cds[0][0], t.cds[-1][1]
            if touches_cds:
                terms.add("coding_sequence_variant")
            if in_exon and (lo < c0 or (e < s and s <= c0)):
                terms.add("5_prime_UTR_variant" if t.strand == "+" else "3_prime_UTR_variant")
            if in_exon and (hi > c1 or (e < s and e >= c1)):
                terms.add("3_prime_UTR_variant" if t.strand == "+" else "5_prime_UTR_variant")
    if "splice_donor_variant" in terms or "splice_acceptor_variant" in terms:
        terms.discard("splice_region_variant")
    if terms - {"intron_variant"}:
        terms.discard("intron_variant")
    return terms


class CodingSequence:
    """A transcript's CDS in transcript direction, with a genomic -> CDS index map."""

    def __init__(self, t: Transcript, reference: Reference) -> None:
        self.strand = t.strand
        segments = t.cds if t.strand == "+" else sorted(t.cds, reverse=True)
        self.index: dict[int, int] = {}
        pieces = []
        n = 0
        for a, b in segments:
            seq = reference.fetch(t.contig, a - 1, b).upper()
            if t.strand == "+":
                positions = range(a, b + 1)
            else:
                seq, positions = revcomp(seq), range(b, a - 1, -1)
            for p in positions:
                self.index[p] = n
                n += 1
            pieces.append(seq)
        # the first CDS segment's phase: bases before the first whole codon (an incomplete 5' end)
        skip = t.phase if t.phase in (1, 2) else 0
        self.seq = "".join(pieces)[skip:]
        if skip:
            self.index = {p: i - skip for p, i in self.index.items() if i >= skip}

    def protein(self, seq: str) -> str:
        return "".join(CODON_TABLE.get(seq[i:i + 3], "X") for i in range(0, len(seq) - 2, 3))


def coding_terms(cds: CodingSequence, allele: Allele) -> set[str]:
    s, e = allele.start, allele.end
    if e < s:  # an insertion before genomic base s: coding when s is
        if s not in cds.index:
            return set()
        at = cds.index[s] if cds.strand == "+" else cds.index[s] + 1  # transcript index
        first, last = at - 1, min(at, len(cds.seq) - 1)  # the bases either side of it
    else:
        hit = [cds.index[p] for p in range(s, e + 1) if p in cds.index]
        if not hit:
            return set()
        first, last = min(hit), max(hit)
    last_codon = len(cds.seq) // 3 - 1
    codon0, codon1 = max(first, 0) // 3, last // 3
    has_stop = cds.seq[-3:] in ("TAA", "TAG", "TGA")
    delta = len(allele.alt) - len(allele.ref)
    if delta < 0 and not allele.alt and e >= s:
        delta = -(last - first + 1)  # a deletion across the CDS edge: the CDS bases it takes
    if delta:
        terms = {"frameshift_variant"} if delta % 3 else (
            {"inframe_insertion"} if delta > 0 else {"inframe_deletion"})
        if codon0 == 0 and cds.seq[:3] == "ATG" and (e >= s or first > 0):
            return {"start_lost"}
        if has_stop and codon1 == last_codon:
            if delta % 3 == 0 and e < s and first >= len(cds.seq) - 3:
                return {"stop_lost", "inframe_insertion"}
            edited = _edited(cds, allele, first, last) if delta % 3 == 0 else None
            kept = edited is not None and "*" in cds.protein(edited[codon0 * 3:])
            terms.add("stop_retained_variant" if kept else "stop_lost")
        elif delta % 3 == 0 and _inframe_stop(cds, allele, first, last):
            terms.add("stop_gained")
        return terms
    if len(hit) != len(allele.ref):  # an MNV crossing the CDS edge
        return {"coding_sequence_variant"}
    alt = allele.alt if cds.strand == "+" else revcomp(allele.alt)
    new = list(cds.seq)
    for offset, base in zip(range(first, last + 1), alt, strict=True):
        new[offset] = base
    old_aa = cds.protein(cds.seq[codon0 * 3:codon1 * 3 + 3])
    new_aa = cds.protein("".join(new[codon0 * 3:codon1 * 3 + 3]))
    terms = set()
    if codon0 == 0 and old_aa[:1] == "M" and new_aa[:1] != "M":
        terms.add("start_lost")
    if "*" in old_aa and "*" not in new_aa:
        terms.add("stop_lost")
    elif "*" in new_aa and "*" not in old_aa:
        terms.add("stop_gained")
    elif old_aa == new_aa:
        terms.add("stop_retained_variant" if "*" in old_aa else "synonymous_variant")
    if not terms:
        terms.add("missense_variant")
    return terms


def _edited(cds: CodingSequence, allele: Allele, first: int, last: int) -> str | None:
    """The CDS with the allele applied (transcript orientation); None when a deletion runs
    past the CDS."""
    if allele.end >= allele.start and last - first + 1 != len(allele.ref):
        return None
    alt = allele.alt if cds.strand == "+" else revcomp(allele.alt)
    if allele.end < allele.start:  # insertion after transcript index `first`
        return cds.seq[:first + 1] + alt + cds.seq[first + 1:]
    return cds.seq[:first] + alt + cds.seq[last + 1:]


def _inframe_stop(cds: CodingSequence, allele: Allele, first: int, last: int) -> bool:
    """Does an in-frame insertion or deletion make a stop codon where there was none?"""
    new = _edited(cds, allele, first, last)
    if new is None:
        return False
    alt = allele.alt
    c0 = max(first, 0) // 3 * 3
    old_window = cds.seq[c0:(last // 3 + 1) * 3]
    new_window = new[c0:c0 + len(old_window) + len(alt) - len(allele.ref)]
    return "*" in cds.protein(new_window) and "*" not in cds.protein(old_window)


def most_severe(terms: set[str]) -> str:
    return min(terms, key=SEVERITY.index) if terms else "intergenic_variant"
