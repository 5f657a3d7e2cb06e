"""Bad input: each error names the file and, where there is one, the line. Real files from
../shared/data where the format allows; broken copies are made in tmp_path."""

from __future__ import annotations

import gzip
import shutil

import pytest

from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.gmt import read_gmt
from hpcray.pipelines.signature.hypotheses import read_corpus
from hpcray.pipelines.signature.samples import read_samples
from hpcray.pipelines.signature.service import Annotator, annotate_with
from hpcray.pipelines.signature.vcf import calls
from tests.conftest import SHARED_DATA

VCF = SHARED_DATA / "vcf"
GENESETS = SHARED_DATA / "genesets"


def test_a_truncated_bgzipped_vcf_is_named(tmp_path):
    source = VCF / "cyvcf2" / "o.vcf.gz"
    broken = tmp_path / "o.vcf.gz"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(InputError) as info:
        list(calls(broken, "JH-027F"))
    message = str(info.value)
    assert message.startswith(f"{broken}: ") and "truncated" in message


def test_a_gzip_that_is_not_bgzip_is_refused_with_the_fix(tmp_path):
    plain = tmp_path / "s.vcf.gz"
    with gzip.open(plain, "wb") as out:
        out.write((VCF / "ensembl_vep" / "input_test.vcf").read_bytes())
    with pytest.raises(InputError, match=rf"{plain}: gzip-compressed but not bgzip .*bgzip"):
        list(calls(plain, "HG00096"))


def test_a_file_that_is_not_a_vcf_is_refused(tmp_path):
    other = tmp_path / "notes.vcf"
    other.write_text("sample\tdose\n")
    with pytest.raises(InputError, match=rf"{other}: neither a bgzipped nor a plain-text VCF"):
        list(calls(other))


def test_a_multi_sample_vcf_needs_its_column_named():
    vcf = VCF / "cyvcf2" / "test.vcf.gz"  # 189 samples
    with pytest.raises(InputError, match=r"has 189 samples .*name the one to use"):
        list(calls(vcf))
    with pytest.raises(InputError, match=r"no sample 'NOPE'"):
        list(calls(vcf, "NOPE"))


def test_an_empty_sample_is_an_error_naming_the_file(tmp_path):
    """HG00096 carries nothing in input_test2.vcf.gz (0|0): an empty sample."""
    annotator = Annotator(gene_model=str(VCF / "ensembl_vep" / "custom_test.gtf.gz"))
    vcf = VCF / "ensembl_vep" / "input_test2.vcf.gz"
    out = tmp_path / "empty.tsv"
    with pytest.raises(InputError, match=rf"{vcf}: empty sample"):
        annotate_with(annotator.backend, {"vcf": str(vcf), "out": str(out), "sample": "e"})
    assert not out.exists()


def test_a_real_sample_is_annotated_into_the_table(tmp_path):
    from hpcray.pipelines.signature.table import read_rows

    annotator = Annotator(gene_model=str(VCF / "ensembl_vep" / "custom_test.gtf.gz"))
    out = tmp_path / "hg.tsv"
    got = annotate_with(annotator.backend, {"vcf": str(VCF / "ensembl_vep" / "input_test.vcf"),
                                            "out": str(out), "sample": "HG00096",
                                            "column": "HG00096"})
    rows = list(read_rows(out))
    assert got["rows"] == len(rows) > 0 and got["variants"] >= 1
    assert {r.sample for r in rows} == {"HG00096"}
    assert "MRPL39" in {r.gene for r in rows}


def test_real_gmt_files_read_with_their_quirks():
    hallmark = read_gmt(GENESETS / "h.all.v7.0.symbols.gmt")
    assert len(hallmark) == 50
    assert any(s.name == "HALLMARK_DNA_REPAIR" and "POLB" in s.genes for s in hallmark)
    go = read_gmt(GENESETS / "enrichr.GO_Biological_Process_2021.gmt")  # empty descriptions
    assert len(go) == 6036 and go[0].description == ""
    spaced = read_gmt(GENESETS / "gsea_edb_gene_sets.gmt")
    assert any(" " in s.name for s in spaced)


def test_a_gmt_line_with_no_genes_names_its_line(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("A\tdesc\tTP53\tATM\nB\tdesc\t\t\nC\tdesc\tX\n")
    with pytest.raises(InputError, match=rf"{gmt}:2: gene set 'B' has no genes"):
        read_gmt(gmt)
    gmt.write_text("A\tdesc\tTP53\nA\tdesc\tATM\n")
    with pytest.raises(InputError, match=rf"{gmt}:2: gene set 'A' already on line 1"):
        read_gmt(gmt)


def test_sample_sheet_errors_name_line_and_column(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample\tvcf\tdose\tcolumn\nS1\ta.vcf.gz\t0.1\t\nS2\tb.vcf.gz\thigh\t\n")
    with pytest.raises(InputError, match=rf"{sheet}:3: dose: 'high' is not a number"):
        read_samples(sheet)
    sheet.write_text("sample,vcf\nS1,a.vcf.gz\n")
    with pytest.raises(InputError, match=rf"{sheet}:1: the header lacks dose"):
        read_samples(sheet)
    sheet.write_text("sample,vcf,dose\nS1,a.vcf.gz,0\nS1,b.vcf.gz,1\n")
    with pytest.raises(InputError, match=rf"{sheet}:3: sample 'S1' already on line 2"):
        read_samples(sheet)
    sheet.write_text("sample,vcf,dose,time\nS1,a.vcf.gz,0.5,24\n")
    (only,) = read_samples(sheet)
    assert only.vcf == tmp_path / "a.vcf.gz" and (only.dose, only.time) == (0.5, 24.0)


def test_the_real_pubmed_abstracts_are_a_corpus_and_bad_lines_are_named(tmp_path):
    corpus = read_corpus(SHARED_DATA / "literature" / "pubmedqa_abstracts_100.jsonl")
    assert len(corpus) == 100 and corpus[0].id == "21645374" and corpus[0].title
    bad = tmp_path / "lit.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(InputError, match=rf"{bad}:2: needs a 'text' string"):
        read_corpus(bad)
    folder = tmp_path / "abstracts"
    folder.mkdir()
    (folder / "a.txt").write_text("Radiation and p53.")
    assert [p.id for p in read_corpus(folder)] == ["a"]


def test_a_vcf_without_index_still_reads_but_warns(tmp_path, caplog):
    copy = tmp_path / "o.vcf.gz"
    shutil.copy(VCF / "cyvcf2" / "o.vcf.gz", copy)
    with caplog.at_level("WARNING", logger="hpcray.signature"):
        assert sum(1 for _ in calls(copy, "JH-027F")) > 100
    assert "no tabix index" in caplog.text
