"""The built-in annotator against bcftools csq: bcftools' own test cases (real GRCh37
transcripts, their expected outputs), and bcftools run live on the synthetic study."""

from __future__ import annotations

import shutil

import pytest

from hpcray.pipelines.signature.builtin import BuiltinAnnotator
from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.genemodel import load_gene_model
from hpcray.pipelines.signature.validate import Agreement, against_bcftools, against_test_cases
from tests.conftest import SHARED_DATA

CSQ_CASES = SHARED_DATA / "vcf" / "bcftools_csq"
VEP_DATA = SHARED_DATA / "vcf" / "ensembl_vep"

# where bcftools and the built-in annotator differ, each for a stated reason:
KNOWN_DIFFERENCES = {
    # bcftools reads the untrimmed REF span, so an unchanged exonic base in it adds
    # 'synonymous'; after trimming the shared bases the change is intronic/in-frame only
    "ENST00000341065/frame3:19026 CAGGTGGCCAG>CAGGCCAG",
    "ENST00000341065/splice-acceptor-donor5:16427 GGTACTGGGG>GGTACTGGG",
    # intronic indels whose untrimmed span reaches a splice site: bcftools writes no
    # consequence ('.'); the trimmed change is intronic, as VEP would call it
    "ENST00000341065/splice-acceptor-donor2:16255 CCCCACCCAGA>CCCACCCAGA",
    "ENST00000341065/splice-acceptor-donor6:18365 ACAACTCAGG>AACAACTCAGG",
    "ENST00000341065/splice-acceptor-donor9:18498 GGTAAGGGG>GGTAAGGGGA",
}


def test_bcftools_test_cases_agree_except_the_named_differences():
    results = against_test_cases(CSQ_CASES)
    total = Agreement()
    for agreement in results.values():
        total.merge(agreement)
    differing = {d.split(": bcftools")[0] for d in total.differences}
    assert differing == KNOWN_DIFFERENCES, total.differences
    assert total.records == 72 and total.same == 67
    # coding consequences: all but the two 'synonymous' of the untrimmed span; they
    # include the multi-allelic TAGAGAG>TAG,T at a stop codon (frameshift + stop_lost,
    # in-frame deletion + stop_retained)
    assert (total.coding_records, total.coding_same) == (27, 25)
    assert total.compound == 1  # one haplotype-aware record (two SNVs in one codon)
    # every case directory took part, SNVs and indels, both strands
    assert {k.split("/")[0] for k in results} == {p.name for p in CSQ_CASES.iterdir()
                                                  if (p / f"{p.name}.gff").exists()}


@pytest.mark.parametrize("variant, expected", [
    ((3634, "A", "C"), {"stop_gained"}),            # minus strand, codon 259: TTA>TGA
    ((3632, "A", "C"), {"stop_lost"}),               # the stop codon
    ((3639, "G", "A"), {"synonymous_variant"}),
    ((2713, "G", "A"), {"splice_region_variant"}),   # 8 bases into the intron
    ((1, "A", "C"), {"3_prime_UTR_variant"}),
])
def test_single_consequences_on_a_minus_strand_transcript(variant, expected):
    case = CSQ_CASES / "ENST00000423372"
    annotator = BuiltinAnnotator(case / "ENST00000423372.gff", case / "ENST00000423372.fa")
    found = annotator.consequences("1", *variant)
    assert [terms for t, terms in found if t and t.id == "ENST00000423372"] == [expected]


@pytest.mark.skipif(shutil.which("bcftools") is None,
                    reason="bcftools is not installed (.ci/run installs it)")
def test_live_bcftools_csq_agrees_on_the_synthetic_study(tmp_path):
    from hpcray.pipelines.signature.synthetic import generate

    study = generate(tmp_path / "study")
    total = Agreement()
    for vcf in study.vcfs[-5:]:  # the highest dose: the most coding variants
        total.merge(against_bcftools(vcf, study.gff3, study.fasta, tmp_path))
    assert total.records > 300 and total.coding_records > 100
    assert total.differences == []


def test_gtf_and_gff3_of_the_same_genes_give_the_same_transcripts():
    gtf = load_gene_model(VEP_DATA / "custom_test.gtf.gz")
    gff = load_gene_model(VEP_DATA / "custom_test.gff.gz")
    shared = {t.id for t in gtf.transcripts} & {t.id for t in gff.transcripts}
    assert len(shared) >= 100
    by_id = {t.id: t for t in gff.transcripts}
    for t in gtf.transcripts:
        if t.id in shared:
            other = by_id[t.id]
            assert (t.gene, t.strand, t.exons) == (other.gene, other.strand, other.exons)


def test_the_synthetic_genes_translate_from_atg_to_a_single_stop(tmp_path):
    from hpcray.pipelines.signature.consequences import CodingSequence
    from hpcray.pipelines.signature.synthetic import generate

    study = generate(tmp_path / "s", genes_per_contig=20)
    for model in (study.gtf, study.gff3):
        annotator = BuiltinAnnotator(model, study.fasta)
        for t in annotator.model.transcripts:
            cds = CodingSequence(t, annotator.reference)
            protein = cds.protein(cds.seq)
            assert protein[0] == "M" and protein[-1] == "*" and "*" not in protein[:-1], t.id


def test_a_gene_model_line_with_too_few_columns_names_the_line(tmp_path):
    bad = tmp_path / "genes.gtf"
    bad.write_text('1\tsrc\texon\t1\t100\t.\t+\t.\tgene_id "g"; transcript_id "t";\n'
                   "1\tsrc\texon\t200\n")
    with pytest.raises(InputError, match=rf"{bad}:2: a feature line has 4 tab-separated"):
        load_gene_model(bad)


def test_a_missing_fasta_is_named(tmp_path):
    case = CSQ_CASES / "ENST00000423372"
    with pytest.raises(InputError, match=rf"{tmp_path / 'nope.fa'}: reference FASTA not found"):
        BuiltinAnnotator(case / "ENST00000423372.gff", tmp_path / "nope.fa")


def test_vcf_contig_names_unlike_the_gene_model_are_detected_and_said():
    annotator = BuiltinAnnotator(VEP_DATA / "custom_test.gtf.gz")
    vcf = SHARED_DATA / "vcf" / "cyvcf2" / "o.vcf.gz"
    with pytest.raises(InputError) as info:
        rows, _ = annotator.annotate(vcf, "JH-027F", "JH-027F")
        list(rows)
    message = str(info.value)
    assert str(vcf) in message and "'chr'" in message and "chr1" in message
    assert "rename_contigs: true" in message
    # with renaming on, chr21 meets 21 and the other contigs are counted as absent
    renamed = BuiltinAnnotator(VEP_DATA / "custom_test.gtf.gz", rename_contigs=True)
    rows, summary = renamed.annotate(vcf, "JH-027F", "JH-027F")
    rows = list(rows)
    assert summary.variants > 0 and "chr1" in summary.absent_contigs
    assert "chr21" not in summary.absent_contigs
    assert any(r.contig == "chr21" for r in rows)


def test_multi_allelic_sites_and_missing_genotypes_of_a_real_trio():
    """o.vcf.gz: 1/2 genotypes carry both ALTs; ./. is skipped, not counted."""
    import pysam

    from hpcray.pipelines.signature.vcf import calls

    vcf = SHARED_DATA / "vcf" / "cyvcf2" / "o.vcf.gz"
    got = {c.line: c for c in calls(vcf, "JH-027M")}
    expected_missing = expected_carried = 0
    two_alts = []
    with pysam.VariantFile(str(vcf)) as handle:
        for line, rec in enumerate(handle, 1):
            gt = rec.samples["JH-027M"]["GT"]
            if all(a is None for a in gt):
                expected_missing += 1
                assert line not in got
            elif any(a for a in gt if a):
                expected_carried += 1
                if len({a for a in gt if a}) == 2:
                    two_alts.append(line)
    assert expected_missing > 100 and len(got) == expected_carried
    assert two_alts and all(len(got[k].alts) == 2 for k in two_alts)
