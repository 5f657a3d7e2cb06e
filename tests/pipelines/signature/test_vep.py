"""The VEP backends: real VEP output (CSQ) read into the table; VEP as an executable (a
stand-in script here, since VEP and its cache cannot be installed on this machine: its exact
command line is checked); a VEP-REST-compatible server on loopback behind the remote adapter."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections import Counter

import pytest

from hpcray.pipelines.signature.builtin import BuiltinAnnotator
from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.service import Annotator, annotate_with
from hpcray.pipelines.signature.table import read_rows
from hpcray.pipelines.signature.vep import VepCommand, VepTable, vep_allele
from tests.conftest import SHARED_DATA

SPLIT_VEP = SHARED_DATA / "vcf" / "bcftools_split_vep" / "split-vep.vcf.gz"


def test_real_vep_output_becomes_the_annotation_table():
    table = VepTable(SPLIT_VEP)
    rows = list(table.rows("s", None))
    assert table.summary.variants == 802
    terms = Counter(r.consequence.split("&")[0] for r in rows)
    assert terms["intron_variant"] > 100 and terms["missense_variant"] > 0
    assert {"OR4F5", "SAMD11"} <= table.summary.genes
    # a multi-allelic site (G>A,C): each ALT keeps only its own CSQ entries (ALLELE_NUM)
    site = [r for r in rows if r.pos == 14976]
    assert {r.alt for r in site} == {"A", "C"}
    assert all(r.impact in ("HIGH", "MODERATE", "LOW", "MODIFIER") for r in rows)


def test_vep_allele_strings():
    assert vep_allele("G", ("A",), "A") == "A"
    assert vep_allele("GA", ("G",), "G") == "-"           # deletion
    assert vep_allele("G", ("GTT",), "GTT") == "TT"       # insertion
    assert vep_allele("G", ("C", "GC"), "GC") == "GC"     # mixed site: kept whole


def test_the_vep_command_line_exactly():
    cmd = VepCommand(["apptainer", "exec", "--bind", "/lus", "vep.sif", "vep"],
                     cache="/lus/vep-cache", assembly="GRCh38", fork=4, extra=["--pick"])
    assert cmd.argv("in.vcf.gz", "out.vcf.gz") == [
        "apptainer", "exec", "--bind", "/lus", "vep.sif", "vep",
        "--input_file", "in.vcf.gz", "--output_file", "out.vcf.gz", "--vcf",
        "--compress_output", "bgzip", "--species", "homo_sapiens", "--symbol",
        "--allele_number", "--no_stats", "--force_overwrite",
        "--offline", "--cache", "--dir_cache", "/lus/vep-cache", "--assembly", "GRCh38",
        "--fork", "4", "--pick"]


def _stand_in_vep(tmp_path, exit_code: int = 0):
    """An executable in VEP's place: records its argv and writes real VEP output."""
    exe = tmp_path / "vep"
    exe.write_text(f"""#!{sys.executable}
import json, shutil, sys
argv = sys.argv[1:]
json.dump(argv, open({str(tmp_path / 'argv.json')!r}, "w"))
if {exit_code}:
    print("-------------------- EXCEPTION --------------------", file=sys.stderr)
    print("MSG: ERROR: Cache directory /nope not found", file=sys.stderr)
    sys.exit({exit_code})
shutil.copy({str(SPLIT_VEP)!r}, argv[argv.index("--output_file") + 1])
""")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_the_vep_backend_runs_the_executable_and_reads_its_output(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCRAY_RUN_DIR", str(tmp_path))
    exe = _stand_in_vep(tmp_path)
    service = Annotator(backend="vep", vep={"executable": str(exe), "cache": "cache",
                                            "assembly": "GRCh37", "fork": 2})
    out = tmp_path / "t.tsv"
    got = annotate_with(service.backend, {"vcf": str(SPLIT_VEP), "out": str(out), "sample": "s"})
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[:2] == ["--input_file", str(SPLIT_VEP)]
    assert argv[argv.index("--dir_cache") + 1] == str(tmp_path / "cache")  # relative: run dir
    assert got["variants"] == 802 and got["backend"] == "vep"
    assert len(list(read_rows(out))) == got["rows"] > 802


def test_a_failing_vep_is_reported_with_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCRAY_RUN_DIR", str(tmp_path))
    service = Annotator(backend="vep", vep={"executable": str(_stand_in_vep(tmp_path, 2))})
    with pytest.raises(InputError, match=r"VEP failed on .*exit 2.*Cache directory /nope"):
        annotate_with(service.backend, {"vcf": str(SPLIT_VEP), "out": str(tmp_path / "t.tsv")})
    missing = Annotator(backend="vep", vep={"executable": str(tmp_path / "absent")})
    with pytest.raises(InputError, match=r"VEP executable .* not found"):
        annotate_with(missing.backend, {"vcf": str(SPLIT_VEP), "out": str(tmp_path / "t.tsv")})


@pytest.fixture
def mirror(tmp_path):
    from hpcray.pipelines.signature.synthetic import generate
    from tests.fixtures.signature.vep_rest_mirror import Mirror

    study = generate(tmp_path / "study", genes_per_contig=40)
    server = Mirror(study.gtf, study.fasta)
    yield server, study
    server.close()


@pytest.mark.timeout(60)
def test_a_vep_rest_server_through_the_remote_adapter_gives_the_same_table(mirror, tmp_path):
    from hpcray.remote.factory import endpoint_for
    from hpcray.spec.services import RemoteEndpointSpec

    server, study = mirror
    server.fail_first = 1  # one HTTP 429: waited out and sent again
    endpoint = endpoint_for(RemoteEndpointSpec(url=server.url, kind="vep_rest",
                                               model="homo_sapiens", name="mirror"))
    endpoint.probe()  # the ping answers (a RemoteError otherwise; its seconds are >= 0 anyway)
    vcf = study.vcfs[-1]
    got = endpoint.call("annotate", {"vcf": str(vcf), "out": str(tmp_path / "rest.tsv"),
                                     "sample": "S15"}).result
    assert got["backend"] == "vep_rest:mirror" and server.rate_limited == 1
    local = annotate_with(_builtin(study), {"vcf": str(vcf), "out": str(tmp_path / "local.tsv"),
                                            "sample": "S15"})
    assert got["variants"] == local["variants"]

    def key(r):
        return (r.pos, r.alt, r.gene, r.transcript, r.consequence.split("&")[0])
    assert sorted(map(key, read_rows(tmp_path / "rest.tsv"))) == sorted(
        map(key, read_rows(tmp_path / "local.tsv")))
    # batches of at most 200 variants
    assert server.requests == 1 + -(-got["variants"] // 200)
    endpoint.close()


@pytest.mark.timeout(60)
def test_a_failing_vep_rest_server_is_named_and_nothing_is_written(mirror, tmp_path):
    from hpcray.pipelines.signature.remote_vep import VepRestEndpoint
    from hpcray.remote.base import RemoteServerError

    server, study = mirror
    server.status = 500
    endpoint = VepRestEndpoint("mirror", server.url, "homo_sapiens")
    out = tmp_path / "rest.tsv"
    with pytest.raises(RemoteServerError, match=rf"remote endpoint 'mirror' \({server.url}\): "
                                                "HTTP 500"):
        endpoint.call("annotate", {"vcf": str(study.vcfs[-1]), "out": str(out)})
    assert not out.exists()
    endpoint.close()


def _builtin(study):
    service = Annotator(gene_model=str(study.gtf), fasta=str(study.fasta))
    return service.backend


def test_relative_paths_of_the_service_are_relative_to_the_run_dir(tmp_path, monkeypatch):
    from hpcray.pipelines.signature.synthetic import generate

    study = generate(tmp_path / "data", genes_per_contig=20)
    monkeypatch.setenv("HPCRAY_RUN_DIR", str(tmp_path))
    service = Annotator(gene_model="data/genes.gtf", fasta="data/genome.fa")
    assert service.info()["gene_model"] == str(study.gtf)
    assert len(service.genes()) == 60
    assert isinstance(service.backend.impl, BuiltinAnnotator)
    assert os.path.isabs(service.info()["fasta"])
