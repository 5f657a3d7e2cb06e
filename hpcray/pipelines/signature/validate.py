"""Agreement of the built-in annotator with bcftools csq: on bcftools' own test cases
(their expected outputs) and, live, on any VCF + GFF3 + FASTA when `bcftools` is installed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpcray.pipelines.signature.builtin import BuiltinAnnotator
from hpcray.pipelines.signature.errors import InputError

if TYPE_CHECKING:
    import pysam

# SO term (ours, VEP's) -> bcftools csq's name; terms bcftools never writes map to None
TO_BCFTOOLS = {
    "missense_variant": "missense", "synonymous_variant": "synonymous",
    "stop_gained": "stop_gained", "stop_lost": "stop_lost", "start_lost": "start_lost",
    "frameshift_variant": "frameshift", "inframe_insertion": "inframe_insertion",
    "inframe_deletion": "inframe_deletion", "splice_acceptor_variant": "splice_acceptor",
    "splice_donor_variant": "splice_donor", "splice_region_variant": "splice_region",
    "5_prime_UTR_variant": "5_prime_utr", "3_prime_UTR_variant": "3_prime_utr",
    "intron_variant": "intron", "non_coding_transcript_exon_variant": "non_coding",
    "stop_retained_variant": "stop_retained", "coding_sequence_variant": "coding_sequence",
}
CODING_BCF = {"missense", "synonymous", "stop_gained", "stop_lost", "start_lost",
              "frameshift", "inframe_insertion", "inframe_deletion", "stop_retained"}


@dataclass
class Agreement:
    records: int = 0
    same: int = 0
    coding_records: int = 0
    coding_same: int = 0
    compound: int = 0  # skipped: haplotype-aware consequences of several variants
    differences: list[str] = field(default_factory=list)

    def add(self, where: str, expected: set[str], observed: set[str]) -> None:
        self.records += 1
        if expected == observed:
            self.same += 1
        else:
            self.differences.append(f"{where}: bcftools {sorted(expected) or ['.']}, "
                                    f"built-in {sorted(observed) or ['.']}")
        if expected & CODING_BCF:
            self.coding_records += 1
            self.coding_same += (expected & CODING_BCF) == (observed & CODING_BCF)

    def merge(self, other: Agreement) -> None:
        self.records += other.records
        self.same += other.same
        self.coding_records += other.coding_records
        self.coding_same += other.coding_same
        self.compound += other.compound
        self.differences += other.differences

    def as_dict(self) -> dict:
        return {"records": self.records, "same": self.same,
                "share": self.same / self.records if self.records else None,
                "compound_skipped": self.compound, "coding_records": self.coding_records,
                "coding_same": self.coding_same,
                "coding_share": (self.coding_same / self.coding_records
                                 if self.coding_records else None),
                "differences": self.differences}


def compound(bcsq: str) -> bool:
    """A haplotype-aware consequence of several variants together (bcftools without -l:
    '@POS' back-references, 'A>B+C>D' changes); the built-in annotator is per variant."""
    return any(e.startswith("@") or "+" in e.rsplit("|", 1)[-1] for e in bcsq.split(","))


def bcsq_terms(bcsq: str) -> set[str]:
    """The consequence names of a BCSQ/TBCSQ value ('.' and '@POS' back-references: none)."""
    terms: set[str] = set()
    for entry in bcsq.split(","):
        head = entry.split("|", 1)[0].strip()
        if not head or head == "." or head.startswith("@"):
            continue
        terms.update(head.lstrip("*").split("&"))
    return terms


def builtin_terms(annotator: BuiltinAnnotator, contig: str, pos: int, ref: str,
                  alts: str) -> set[str]:
    """Our terms in bcftools' names, over the protein-coding transcripts (bcftools csq
    annotates those; a non-coding transcript's exon gets nothing from it)."""
    terms: set[str] = set()
    for alt in alts.split(","):
        for t, found in annotator.consequences(contig, pos, ref, alt):
            if t is not None and t.coding:
                terms.update(x for x in (TO_BCFTOOLS.get(x) for x in found) if x)
    return terms


def expected_records(path: Path) -> list[tuple[int, str, str, str]]:
    """(pos, ref, alt, BCSQ) from a bcftools test's expected output: the observed line of
    each expected/observed pair, or each per-sample line."""
    lines = [ln for ln in path.read_text().splitlines()]
    blocks, current = [], []
    for ln in lines:
        if ln.strip():
            current.append(ln)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    out = []
    for block in blocks:
        rows = [b.split("\t") for b in block]
        if len(rows) == 2 and rows[0][:3] == rows[1][:3]:  # expected + observed
            rows = rows[1:]
        merged: dict[tuple[int, str, str], set[str]] = {}
        for cols in rows:
            if len(cols) < 4:
                continue
            bcsq = ",".join(c for c in cols[3:] if c not in (".",) and "|" in c) or "."
            merged.setdefault((int(cols[0]), cols[1], cols[2]), set()).add(bcsq)
        for (pos, ref, alt), values in merged.items():
            out.append((pos, ref, alt, ",".join(sorted(values))))
    return out


def against_test_cases(root: Path) -> dict[str, Agreement]:
    """Every bcftools csq test case under `root` (a directory per transcript, with its
    .fa, .gff, X.vcf and expected X.txt)."""
    results: dict[str, Agreement] = {}
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        fasta, gff = case / f"{case.name}.fa", case / f"{case.name}.gff"
        if not (fasta.exists() and gff.exists()):
            continue
        annotator = BuiltinAnnotator(gff, fasta)
        contig = next(iter(annotator.model.contigs))
        for expected in sorted(case.glob("*.txt")):
            per_variant = expected.with_suffix(".txt-l")  # bcftools csq -l: per variant
            if per_variant.exists():
                expected = per_variant
            agreement = Agreement()
            for pos, ref, alt, bcsq in expected_records(expected):
                if compound(bcsq):
                    agreement.compound += 1
                    continue
                agreement.add(f"{case.name}/{expected.stem}:{pos} {ref}>{alt}",
                              bcsq_terms(bcsq), builtin_terms(annotator, contig, pos, ref, alt))
            results[f"{case.name}/{expected.name}"] = agreement
        if (case / "test.cmd.out").exists():
            results.update(_multiallelic_case(case, annotator))
    return results


def _multiallelic_case(case: Path, full: BuiltinAnnotator) -> dict[str, Agreement]:
    """test.cmd.out: per sample `POS REF ALT GT TBCSQ...` for the full GFF, a blank line,
    then the same for short.gff; each sample's non-reference allele is compared."""
    import pysam

    with pysam.VariantFile(str(case / "multiallelic.vcf")) as vcf:
        alts = {rec.pos: (_ref(rec), rec.alts or ()) for rec in vcf}
    blocks = case.joinpath("test.cmd.out").read_text().strip().split("\n\n")
    models = [full, BuiltinAnnotator(case / "short.gff", case / f"{case.name}.fa")]
    contig = next(iter(full.model.contigs))
    results = {}
    labels = ("test.cmd.out", "test.cmd.out-short")
    for block, annotator, label in zip(blocks, models, labels, strict=False):
        agreement = Agreement()
        for line in block.splitlines():
            cols = line.split("\t")
            pos, gt = int(cols[0]), cols[3]
            ref, record_alts = alts[pos]
            index = max(int(a) for a in gt.replace("|", "/").split("/") if a.isdigit())
            alt = record_alts[index - 1]
            agreement.add(f"{case.name}/{label}:{pos} {ref}>{alt}",
                          bcsq_terms(",".join(cols[4:])),
                          builtin_terms(annotator, contig, pos, ref, alt))
        results[f"{case.name}/{label}"] = agreement
    return results


def _ref(rec: pysam.VariantRecord) -> str:
    """A read record's REF: VCF requires one; pysam types it optional (a record built in
    memory may have no alleles yet)."""
    if rec.ref is None:
        raise InputError(f"{rec.chrom}:{rec.pos}: the record has no REF allele")
    return rec.ref


def run_bcftools_csq(vcf: Path, gff: Path, fasta: Path, out: Path) -> Path:
    """`bcftools csq -l` (per-variant, as the built-in annotator) into `out` (BCF)."""
    exe = shutil.which("bcftools")
    if exe is None:
        raise InputError("bcftools is not on PATH (Debian: apt install bcftools)")
    cmd = [exe, "csq", "-l", "-f", str(fasta), "-g", str(gff), "-Ob", "-o", str(out),
           "--force", str(vcf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise InputError(f"bcftools csq failed on {vcf}: {proc.stderr.strip()[-500:]}")
    return out


def against_bcftools(vcf: Path, gff: Path, fasta: Path, work: Path) -> Agreement:
    """Run bcftools csq on the same files and compare record by record."""
    import pysam

    out = run_bcftools_csq(vcf, gff, fasta, work / "bcftools-csq.bcf")
    annotator = BuiltinAnnotator(gff, fasta)
    agreement = Agreement()
    with pysam.VariantFile(str(out)) as result:
        for rec in result:
            bcsq = rec.info.get("BCSQ")
            expected = bcsq_terms(",".join(bcsq) if bcsq else ".")
            alts = ",".join(rec.alts or ())
            agreement.add(f"{rec.chrom}:{rec.pos} {rec.ref}>{alts}", expected,
                          builtin_terms(annotator, rec.chrom, rec.pos, _ref(rec), alts))
    return agreement
