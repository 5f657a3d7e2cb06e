"""A synthetic signature-detection study in real formats, for the demo and the tests:

- a small genome (FASTA + .fai), its gene model as GTF and as Ensembl-style GFF3
  (bcftools csq reads the GFF3), one protein-coding transcript per gene;
- a GMT file: three radiation-response pathways (real gene symbols) and background sets;
- 15 samples (5 doses x 3 time points), each a bgzipped, tabix-indexed single-sample VCF:
  background mutations everywhere, plus mutations in the genes of the planted pathways at
  a rate that grows with dose;
- a sample sheet (samples.tsv) and a tiny literature corpus (JSONL abstracts).

`python -m hpcray.pipelines.signature.synthetic DIR` writes it; the demo workflow does so in
its setup step.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpcray.pipelines.signature.consequences import CODON_TABLE, revcomp

PLANTED = {
    "DNA_DOUBLE_STRAND_BREAK_REPAIR": [
        "ATM", "ATR", "BRCA1", "BRCA2", "RAD51", "XRCC4", "LIG4", "PRKDC", "NBN", "MRE11",
        "RAD50", "TP53BP1", "XRCC5", "XRCC6", "MDC1"],
    "P53_SIGNALING": [
        "TP53", "CDKN1A", "MDM2", "GADD45A", "BAX", "BBC3", "PMAIP1", "SESN1", "SESN2",
        "RRM2B", "TP53I3", "FAS", "ZMAT3", "DDB2", "XPC"],
    "INTRINSIC_APOPTOSIS": [
        "CASP3", "CASP8", "CASP9", "APAF1", "CYCS", "BCL2", "BCL2L1", "BID", "BAK1",
        "DIABLO", "XIAP", "FADD", "TNFRSF10B", "BIRC5", "MCL1"],
}
DOSES = [0.0, 0.05, 0.1, 0.25, 0.5]   # Gy
TIMES = [24, 72, 168]                  # hours after exposure
_SENSE = [c for c, a in CODON_TABLE.items() if a != "*" and c != "ATG"]

LITERATURE = [
    ("DNA_DOUBLE_STRAND_BREAK_REPAIR",
     "Ionizing radiation induces DNA double-strand breaks that are repaired by "
     "non-homologous end joining through XRCC4, LIG4, PRKDC and the Ku heterodimer "
     "XRCC5/XRCC6; low doses leave a fraction of breaks misrepaired."),
    ("DNA_DOUBLE_STRAND_BREAK_REPAIR",
     "ATM is activated within minutes of low-dose irradiation and phosphorylates MDC1, "
     "NBN and TP53BP1 at double-strand break sites; homologous recombination through "
     "BRCA1, BRCA2 and RAD51 dominates in S and G2 phase."),
    ("P53_SIGNALING",
     "After radiation exposure TP53 is stabilised by ATM-dependent phosphorylation; its "
     "targets CDKN1A and GADD45A arrest the cell cycle and MDM2 closes the feedback loop."),
    ("P53_SIGNALING",
     "Low-dose radiation responses in human fibroblasts show dose-dependent induction of "
     "p53 targets including SESN1, SESN2, RRM2B, DDB2 and XPC, linking p53 to repair."),
    ("INTRINSIC_APOPTOSIS",
     "Radiation-induced apoptosis proceeds through BAX and BAK1 mediated mitochondrial "
     "outer membrane permeabilisation, release of CYCS and DIABLO, and activation of "
     "CASP9 on the APAF1 apoptosome, then CASP3."),
    ("INTRINSIC_APOPTOSIS",
     "The p53 targets BBC3 (PUMA) and PMAIP1 (NOXA) neutralise BCL2, BCL2L1 and MCL1 "
     "after irradiation, committing damaged cells to intrinsic apoptosis."),
    (None, "Circadian clock genes regulate hepatic glucose metabolism through feeding "
     "rhythms and hormonal cues in mice."),
    (None, "Olfactory receptor gene clusters evolve by duplication and pseudogenisation "
     "across mammalian lineages."),
    (None, "Ribosome biogenesis requires coordinated transcription of ribosomal RNA by RNA "
     "polymerase I and assembly factors in the nucleolus."),
    (None, "Cholesterol efflux through ABCA1 lowers atherosclerotic plaque formation in "
     "macrophages."),
    (None, "Synaptic vesicle release depends on SNARE complex assembly and calcium "
     "sensing by synaptotagmin."),
    (None, "Keratinocyte differentiation in the epidermis follows a calcium gradient and "
     "is marked by involucrin expression."),
]


@dataclass
class Gene:
    name: str
    contig: str
    strand: str
    exons: list[tuple[int, int]]
    cds: list[tuple[int, int]]  # including the stop codon
    tx_start: int = 0
    tx_end: int = 0


@dataclass
class Study:
    root: Path
    fasta: Path
    gtf: Path
    gff3: Path
    gmt: Path
    samples: Path
    literature: Path
    planted: list[str] = field(default_factory=lambda: list(PLANTED))
    vcfs: list[Path] = field(default_factory=list)


def _random_seq(rng: random.Random, n: int) -> list[str]:
    return [rng.choice("ACGT") for _ in range(n)]


def _build_genome(rng: random.Random, names: list[str], contigs: list[str], per_contig: int):
    genes: list[Gene] = []
    seqs: dict[str, list[str]] = {}
    spacing = 8000
    for ci, contig in enumerate(contigs):
        length = per_contig * spacing + spacing
        seq = _random_seq(rng, length)
        for gi in range(per_contig):
            name = names[ci * per_contig + gi]
            base = spacing // 2 + gi * spacing + rng.randint(0, 1000)
            lengths = [rng.randint(60, 120) * 3, rng.randint(40, 100) * 3, rng.randint(40, 100) * 3]
            utr5, utr3, intron = 60, 120, 500
            codons = ["ATG"] + [rng.choice(_SENSE) for _ in range(sum(lengths) // 3 - 2)] + [
                rng.choice(["TAA", "TAG", "TGA"])]
            cds_seq = "".join(codons)
            # transcript layout, 5'->3': utr5 + exon1 cds | intron | exon2 | intron | exon3 + utr3
            parts = [utr5 + lengths[0], lengths[1], lengths[2] + utr3]
            mrna = "".join(_random_seq(rng, utr5)) + cds_seq + "".join(_random_seq(rng, utr3))
            strand = rng.choice("+-")
            span = sum(parts) + 2 * intron
            tx_exons, offset = [], 0
            for i, size in enumerate(parts):
                tx_exons.append((offset, offset + size))
                offset += size + (intron if i < 2 else 0)
            exons, cds = [], []
            cds_lo, cds_hi = utr5, utr5 + len(cds_seq)  # in mRNA coordinates
            m = 0
            for a, b in tx_exons:
                piece = mrna[m:m + (b - a)]
                if strand == "+":
                    g0 = base + a
                    seq[g0:g0 + len(piece)] = piece
                    exons.append((g0 + 1, g0 + len(piece)))
                else:
                    g1 = base + span - a  # exclusive end in 0-based
                    g0 = g1 - len(piece)
                    seq[g0:g1] = revcomp(piece)
                    exons.append((g0 + 1, g1))
                lo, hi = max(m, cds_lo), min(m + len(piece), cds_hi)
                if lo < hi:
                    if strand == "+":
                        cds.append((base + a + (lo - m) + 1, base + a + (hi - m)))
                    else:
                        g1 = base + span - a
                        cds.append((g1 - (hi - m) + 1, g1 - (lo - m)))
                m += len(piece)
            # canonical splice sites (GT...AG) in transcript orientation
            for (_, b), (c, _) in zip(tx_exons, tx_exons[1:], strict=False):
                for off, motif in ((b, "GT"), (c - 2, "AG")):
                    if strand == "+":
                        seq[base + off:base + off + 2] = list(motif)
                    else:
                        g1 = base + span - off
                        seq[g1 - 2:g1] = list(revcomp(motif))
            genes.append(Gene(name, contig, strand, sorted(exons), sorted(cds),
                              base + 1, base + span))
        seqs[contig] = seq
    return genes, {c: "".join(s) for c, s in seqs.items()}


def _write_fasta(path: Path, seqs: dict[str, str]) -> None:
    import pysam

    with path.open("w") as out:
        for contig, seq in seqs.items():
            out.write(f">{contig}\n")
            for i in range(0, len(seq), 60):
                out.write(seq[i:i + 60] + "\n")
    pysam.faidx(str(path))


def _write_gtf(path: Path, genes: list[Gene]) -> None:
    with path.open("w") as out:
        out.write("#!genome-build synthetic\n")
        for g in genes:
            gid, tid = f"SYNG{g.name}", f"SYNT{g.name}"
            attrs = (f'gene_id "{gid}"; transcript_id "{tid}"; gene_name "{g.name}"; '
                     'gene_biotype "protein_coding"; transcript_biotype "protein_coding";')
            out.write(f"{g.contig}\tsynthetic\tgene\t{g.tx_start}\t{g.tx_end}\t.\t{g.strand}\t.\t"
                      f'gene_id "{gid}"; gene_name "{g.name}"; gene_biotype "protein_coding";\n')
            out.write(f"{g.contig}\tsynthetic\ttranscript\t{g.tx_start}\t{g.tx_end}\t.\t"
                      f"{g.strand}\t.\t{attrs}\n")
            for a, b in g.exons:
                out.write(f"{g.contig}\tsynthetic\texon\t{a}\t{b}\t.\t{g.strand}\t.\t{attrs}\n")
            # GTF: CDS without the stop codon, which gets its own line
            cds = list(g.cds)
            if g.strand == "+":
                a, b = cds[-1]
                cds[-1] = (a, b - 3)
                stop = (b - 2, b)
            else:
                a, b = cds[0]
                cds[0] = (a + 3, b)
                stop = (a, a + 2)
            for a, b in cds:
                out.write(f"{g.contig}\tsynthetic\tCDS\t{a}\t{b}\t.\t{g.strand}\t0\t{attrs}\n")
            out.write(f"{g.contig}\tsynthetic\tstop_codon\t{stop[0]}\t{stop[1]}\t.\t{g.strand}"
                      f"\t0\t{attrs}\n")


def _write_gff3(path: Path, genes: list[Gene]) -> None:
    with path.open("w") as out:
        out.write("##gff-version 3\n")
        for g in genes:
            gid, tid = f"SYNG{g.name}", f"SYNT{g.name}"
            out.write(f"{g.contig}\tsynthetic\tgene\t{g.tx_start}\t{g.tx_end}\t.\t{g.strand}\t.\t"
                      f"ID=gene:{gid};Name={g.name};biotype=protein_coding;gene_id={gid}\n")
            out.write(f"{g.contig}\tsynthetic\tmRNA\t{g.tx_start}\t{g.tx_end}\t.\t{g.strand}\t.\t"
                      f"ID=transcript:{tid};Parent=gene:{gid};Name={g.name}-201;"
                      f"biotype=protein_coding;transcript_id={tid}\n")
            for a, b in g.exons:
                out.write(f"{g.contig}\tsynthetic\texon\t{a}\t{b}\t.\t{g.strand}\t.\t"
                          f"Parent=transcript:{tid}\n")
            for a, b in g.cds:
                out.write(f"{g.contig}\tsynthetic\tCDS\t{a}\t{b}\t.\t{g.strand}\t0\t"
                          f"ID=CDS:P{g.name};Parent=transcript:{tid}\n")
            c0, c1 = g.cds[0][0], g.cds[-1][1]
            for a, b in g.exons:  # the UTRs, as Ensembl writes them (bcftools csq needs them)
                for lo, hi, left in ((a, min(b, c0 - 1), True), (max(a, c1 + 1), b, False)):
                    if lo <= hi:
                        five = left == (g.strand == "+")
                        kind = "five_prime_UTR" if five else "three_prime_UTR"
                        out.write(f"{g.contig}\tsynthetic\t{kind}\t{lo}\t{hi}\t.\t{g.strand}"
                                  f"\t.\tParent=transcript:{tid}\n")


def _write_vcf(path: Path, sample: str, contigs: dict[str, int],
               variants: list[tuple[str, int, str, str]]) -> Path:
    import pysam

    text = path.with_suffix("")  # s01.vcf.gz -> s01.vcf
    with text.open("w") as out:
        out.write("##fileformat=VCFv4.2\n##source=hpcray.pipelines.signature.synthetic\n")
        for contig, length in contigs.items():
            out.write(f"##contig=<ID={contig},length={length}>\n")
        out.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        out.write(f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{sample}\n")
        for contig, pos, ref, alt in sorted(variants, key=lambda v: (v[0], v[1])):
            out.write(f"{contig}\t{pos}\t.\t{ref}\t{alt}\t50\tPASS\t.\tGT\t0/1\n")
    pysam.tabix_index(str(text), preset="vcf", force=True)  # bgzip + .tbi; removes the text
    return path


def generate(root: str | Path, *, seed: int = 2, background: float = 60.0,
             planted_rate: float = 24.0, genes_per_contig: int = 80) -> Study:
    """Write the study under `root`. `background`: mutations per sample anywhere;
    `planted_rate`: extra mutations per planted pathway per Gy (in coding exons). How often
    the planted sets are found, and how often a background set is, is measured over seeds
    1-30 by tests/pipelines/signature/test_calibration.py (docs/pipelines/signature.md);
    seed 2, the demo's, finds the planted sets and no other."""
    rng = random.Random(seed)
    root = Path(root)
    (root / "vcf").mkdir(parents=True, exist_ok=True)
    planted_genes = [g for genes in PLANTED.values() for g in genes]
    contigs = ["1", "2", "3"]
    n_background = genes_per_contig * len(contigs) - len(planted_genes)
    names = planted_genes + [f"SG{i:04d}" for i in range(1, n_background + 1)]
    rng.shuffle(names)
    genes, seqs = _build_genome(rng, names, contigs, genes_per_contig)
    study = Study(root, root / "genome.fa", root / "genes.gtf", root / "genes.gff3",
                  root / "pathways.gmt", root / "samples.tsv", root / "literature.jsonl")
    _write_fasta(study.fasta, seqs)
    _write_gtf(study.gtf, genes)
    _write_gff3(study.gff3, genes)
    background_genes = [n for n in names if n not in planted_genes]
    with study.gmt.open("w") as out:
        for name, members in PLANTED.items():
            out.write(f"{name}\tplanted: mutation rate grows with dose\t"
                      + "\t".join(members) + "\n")
        for i in range(1, 38):
            members = rng.sample(background_genes,
                                 min(rng.randint(10, 25), len(background_genes) // 2))
            out.write(f"BACKGROUND_SET_{i:02d}\tno dose effect\t" + "\t".join(members) + "\n")
    by_name = {g.name: g for g in genes}
    lengths = {c: len(s) for c, s in seqs.items()}
    sheet = ["sample\tvcf\tdose\ttime"]
    index = 0
    for dose in DOSES:
        for time_h in TIMES:
            index += 1
            sample = f"S{index:02d}"
            time_factor = 1.0 + 0.15 * TIMES.index(time_h)
            variants: dict[tuple[str, int], tuple[str, int, str, str]] = {}
            for _ in range(poisson(rng, background * time_factor)):
                contig = rng.choice(contigs)
                pos = rng.randint(1, lengths[contig])
                _snv(rng, seqs, contig, pos, variants)
            for members in PLANTED.values():
                for _ in range(poisson(rng, planted_rate * dose * time_factor)):
                    gene = by_name[rng.choice(members)]
                    a, b = rng.choice(gene.cds)
                    _snv(rng, seqs, gene.contig, rng.randint(a, b), variants)
            vcf = _write_vcf(root / "vcf" / f"{sample}.vcf.gz", sample, lengths,
                             list(variants.values()))
            study.vcfs.append(vcf)
            sheet.append(f"{sample}\tvcf/{sample}.vcf.gz\t{dose}\t{time_h}")
    study.samples.write_text("\n".join(sheet) + "\n")
    (root / "planted.txt").write_text("\n".join(PLANTED) + "\n")
    with study.literature.open("w") as out:
        for i, (pathway, text) in enumerate(LITERATURE, 1):
            out.write(json.dumps({"id": f"SYN{i:03d}", "title": (pathway or "other").replace(
                "_", " ").lower(), "text": text}) + "\n")
    return study


def _snv(rng: random.Random, seqs: dict[str, str], contig: str, pos: int, variants: dict) -> None:
    """A mutation at `pos`: mostly SNVs, 1 in 10 a short insertion or deletion (1-3 bp)."""
    seq = seqs[contig]
    pos = min(max(pos, 2), len(seq) - 4)
    ref = seq[pos - 1]
    roll = rng.random()
    if roll < 0.05:  # deletion of 1-3 bases after the anchor base
        size = rng.randint(1, 3)
        variants[(contig, pos)] = (contig, pos, seq[pos - 1:pos + size], ref)
    elif roll < 0.10:
        variants[(contig, pos)] = (contig, pos, ref, ref + "".join(
            rng.choice("ACGT") for _ in range(rng.randint(1, 3))))
    else:
        variants[(contig, pos)] = (contig, pos, ref, rng.choice([b for b in "ACGT" if b != ref]))


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw from `rng` (seeded, so the study is the same every time)."""
    import math

    if lam <= 0:
        return 0
    if lam > 30:  # exp(-lam) underflows the product method; the normal limit is close here
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def build_models(root: str | Path) -> tuple[Path, Path]:
    """The demo's embedding and LLM models (random weights, locally trained tokenizers):
    the LLM gets a 2048-token context, room for a prompt with three passages."""
    from hpcray.models.tiny import build_tiny_causal_lm, build_tiny_encoder

    root = Path(root)
    return (build_tiny_encoder(root / "tiny-bert"),
            build_tiny_causal_lm(root / "tiny-gpt2", context=2048))


def main(argv: list[str]) -> int:
    """python -m hpcray.pipelines.signature.synthetic DIR [--models]"""
    args = [a for a in argv if not a.startswith("--")]
    study = generate(args[0] if args else "signature-data")
    print(study.root)
    if "--models" in argv:
        for path in build_models(study.root / "models"):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
