"""The built-in annotator: a gene model (GTF/GFF3) and, for coding consequences, the
reference FASTA. No cache, no network: what it needs is on the shared filesystem."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcray.pipelines.signature.consequences import (
    IMPACT,
    Allele,
    CodingSequence,
    coding_terms,
    most_severe,
    region_terms,
)
from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.genemodel import GeneModel, Transcript, load_gene_model
from hpcray.pipelines.signature.table import Row, inside_gene
from hpcray.pipelines.signature.vcf import Call, calls, header_contigs


class FastaReference:
    def __init__(self, path: str | Path) -> None:
        import pysam

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: reference FASTA not found")
        try:
            self._fasta = pysam.FastaFile(str(path))  # builds the .fai if missing
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable FASTA: {exc}") from None
        self.path = path
        self.contigs = set(self._fasta.references)

    def fetch(self, contig: str, start: int, end: int) -> str:
        return self._fasta.fetch(contig, start, end)


def contig_mismatch(vcf_contigs: set[str], model_contigs: set[str]) -> str | None:
    """A message when the VCF names contigs one way (chr1) and the gene model another (1)."""
    if not vcf_contigs or vcf_contigs & model_contigs:
        return None
    stripped = {c.removeprefix("chr") for c in vcf_contigs}
    prefixed = {"chr" + c for c in vcf_contigs}
    if stripped & model_contigs:
        return (f"the VCF names contigs with 'chr' (e.g. {sorted(vcf_contigs)[0]}) and the "
                f"gene model without (e.g. {sorted(model_contigs)[0]}); set rename_contigs: "
                "true, or rename them (bcftools annotate --rename-chrs)")
    if prefixed & model_contigs:
        return (f"the VCF names contigs without 'chr' (e.g. {sorted(vcf_contigs)[0]}) and the "
                f"gene model with it (e.g. {sorted(model_contigs)[0]}); set rename_contigs: "
                "true, or rename them")
    return None


@dataclass
class Summary:
    variants: int = 0
    rows: int = 0
    seconds: float = 0.0
    absent_contigs: Counter | None = None
    genes: set[str] | None = None


class BuiltinAnnotator:
    """Gene, transcript, region class and (with a FASTA) coding consequence per ALT allele."""

    def __init__(self, gene_model: str | Path, fasta: str | Path | None = None, *,
                 rename_contigs: bool = False) -> None:
        self.model: GeneModel = load_gene_model(gene_model)
        self.reference = FastaReference(fasta) if fasta else None
        self.rename_contigs = rename_contigs
        self._cds: dict[str, CodingSequence | None] = {}

    def _rename(self, contig: str) -> str:
        if not self.rename_contigs or contig in self.model.contigs:
            return contig
        for candidate in (contig.removeprefix("chr"), "chr" + contig):
            if candidate in self.model.contigs:
                return candidate
        return contig

    def check_contigs(self, vcf: str | Path, seen: set[str] | None = None) -> None:
        if self.rename_contigs:
            return
        contigs = set(seen or header_contigs(vcf))
        problem = contig_mismatch(contigs, self.model.contigs)
        if problem:
            raise InputError(f"{vcf}: contig names do not match {self.model.path}: {problem}")

    def _coding(self, t: Transcript) -> CodingSequence | None:
        if t.id not in self._cds:
            ref = self.reference
            self._cds[t.id] = (CodingSequence(t, ref) if ref is not None and t.coding
                               and t.contig in ref.contigs else None)
        return self._cds[t.id]

    def consequences(self, contig: str, pos: int, ref: str,
                     alt: str) -> list[tuple[Transcript | None, set[str]]]:
        allele = Allele.trimmed(pos, ref, alt)
        lo, hi = min(allele.start, allele.end), max(allele.start, allele.end)
        out: list[tuple[Transcript | None, set[str]]] = []
        for t in self.model.near(contig, lo, hi):
            terms = region_terms(t, allele)
            if not terms:
                continue
            cds = self._coding(t)
            if cds is not None and "coding_sequence_variant" in terms:
                coding = coding_terms(cds, allele)
                if coding:
                    terms.discard("coding_sequence_variant")
                    terms |= coding
                if terms & {"frameshift_variant", "inframe_insertion", "inframe_deletion",
                            "missense_variant", "synonymous_variant", "stop_gained",
                            "stop_lost", "start_lost"}:
                    terms.discard("5_prime_UTR_variant")
                    terms.discard("3_prime_UTR_variant")
            out.append((t, terms))
        return out or [(None, {"intergenic_variant"})]

    def annotate_calls(self, sample: str, records: Iterator[Call],
                       summary: Summary) -> Iterator[Row]:
        summary.absent_contigs = Counter()
        summary.genes = set()
        for call in records:
            contig = self._rename(call.contig)
            if contig not in self.model.contigs:
                if not summary.variants and not self.rename_contigs:
                    problem = contig_mismatch({call.contig}, self.model.contigs)
                    if problem:
                        raise InputError(f"record {call.line}: contig names do not match "
                                         f"{self.model.path}: {problem}")
                summary.absent_contigs[call.contig] += 1
            summary.variants += 1
            for alt in call.alts:
                for t, terms in self.consequences(contig, call.pos, call.ref, alt):
                    top = most_severe(terms)
                    if t is not None and inside_gene(t.gene, top):
                        summary.genes.add(t.gene)
                    summary.rows += 1
                    yield Row(sample, call.contig, call.pos, call.ref, alt,
                              t.gene if t else "", t.gene_id if t else "", t.id if t else "",
                              "&".join(sorted(terms, key=list(IMPACT).index)), IMPACT[top])

    def annotate(self, vcf: str | Path, sample: str,
                 column: str | None = None) -> tuple[Iterator[Row], Summary]:
        self.check_contigs(vcf)
        summary = Summary()
        started = time.perf_counter()

        def rows() -> Iterator[Row]:
            try:
                yield from self.annotate_calls(sample, calls(vcf, column), summary)
            except InputError as exc:
                if str(exc).startswith("record "):
                    raise InputError(f"{vcf}: {exc}") from None
                raise
            summary.seconds = time.perf_counter() - started
        return rows(), summary
