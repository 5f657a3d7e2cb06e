"""Reading VCFs through htslib (pysam): bgzipped and tabix-indexed, or plain text. Every
failure names the file and, where htslib gets that far, the record."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcray.pipelines.signature.errors import InputError

log = logging.getLogger("hpcray.signature")

_BGZF_EXTRA = b"BC"  # the BGZF block's extra subfield id


@dataclass(frozen=True)
class Call:
    """One record as a sample carries it: the ALT alleles its genotype holds (all ALTs
    for a sites-only VCF)."""
    contig: str
    pos: int
    ref: str
    alts: tuple[str, ...]
    line: int  # the record's number in the file (1 = first record), for error messages
    all_alts: tuple[str, ...] = ()  # every ALT of the record, in order


def check_container(path: Path) -> str:
    """'bgzf' or 'text'; refuses a gzip that is not BGZF and a file that is neither."""
    if not path.is_file():
        raise InputError(f"{path}: VCF not found")
    with path.open("rb") as handle:
        head = handle.read(18)
    if not head:
        raise InputError(f"{path}: the file is empty")
    if head[:2] == b"\x1f\x8b":
        if len(head) < 14 or not (head[3] & 4) or head[12:14] != _BGZF_EXTRA:
            raise InputError(f"{path}: gzip-compressed but not bgzip (BGZF); htslib cannot "
                             "index it. Recompress: zcat FILE | bgzip > FILE.gz && "
                             "tabix -p vcf FILE.gz")
        return "bgzf"
    if head.startswith(b"##fileformat=VCF") or head.startswith(b"#CHROM"):
        return "text"
    raise InputError(f"{path}: neither a bgzipped nor a plain-text VCF (no ##fileformat "
                     "header)")


def open_vcf(path: str | Path):
    import pysam

    path = Path(path)
    container = check_container(path)
    if container == "bgzf" and not any(Path(str(path) + s).exists() for s in (".tbi", ".csi")):
        log.warning("%s: no tabix index (.tbi/.csi); reading it whole", path)
    try:
        return pysam.VariantFile(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: htslib cannot read it: {exc}") from None


def samples_of(path: str | Path) -> list[str]:
    with open_vcf(path) as vcf:
        return list(vcf.header.samples)


def header_contigs(path: str | Path) -> list[str]:
    with open_vcf(path) as vcf:
        return list(vcf.header.contigs)


def calls(path: str | Path, sample: str | None = None) -> Iterator[Call]:
    """The records `sample` carries a non-reference allele at (every record, with all its
    ALTs, when the VCF has no sample columns). Missing genotypes are skipped."""
    path = Path(path)
    vcf = open_vcf(path)
    with vcf:
        names = list(vcf.header.samples)
        if sample is None and len(names) > 1:
            raise InputError(f"{path}: has {len(names)} samples ({', '.join(names[:5])}"
                             f"{', ...' if len(names) > 5 else ''}); name the one to use")
        if sample is not None and sample not in names:
            raise InputError(f"{path}: no sample {sample!r}; it has {', '.join(names[:10])}")
        column = sample if sample is not None else (names[0] if names else None)
        number = 0
        try:
            for number, rec in enumerate(vcf, 1):
                alts = rec.alts or ()
                if not alts:
                    continue
                if column is None:
                    carried = alts
                else:
                    gt = rec.samples[column].get("GT") or ()
                    idx = sorted({a for a in gt if a is not None and a > 0})
                    carried = tuple(alts[a - 1] for a in idx if a - 1 < len(alts))
                carried = tuple(a for a in carried if a not in ("*", ".") and not a.startswith("<"))
                if carried:
                    yield Call(rec.chrom, rec.pos, rec.ref, carried, number, tuple(alts))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable after record {number} "
                             f"(truncated or corrupt?): {exc}") from None


def contigs_used(path: str | Path, records: int = 1000) -> set[str]:
    """The contigs of the header, or of the first `records` records when it lists none.
    Raises InputError for an unreadable file (not bgzip, truncated)."""
    with open_vcf(path) as vcf:
        named = set(vcf.header.contigs)
        if named:
            return named
        seen: set[str] = set()
        try:
            for i, rec in enumerate(vcf):
                seen.add(rec.chrom)
                if i >= records:
                    break
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable (truncated or corrupt?): {exc}") from None
        return seen
