"""Ensembl VEP as the annotation backend: its VCF output (the CSQ field) read into the
annotation table, and VEP run as an executable (on PATH or inside a container) with the
user's offline cache."""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hpcray.pipelines.signature.builtin import Summary
from hpcray.pipelines.signature.consequences import IMPACT, most_severe
from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.table import Row, inside_gene
from hpcray.pipelines.signature.vcf import calls, open_vcf

log = logging.getLogger("hpcray.signature")


def vep_allele(ref: str, alts: tuple[str, ...], alt: str) -> str:
    """The allele string VEP writes for `alt` (CSQ's first field): with every allele sharing
    its first base, that base is dropped and an empty allele is '-'."""
    if len({a[:1] for a in (ref, *alts)}) == 1:
        return alt[1:] or "-"
    return alt


def csq_format(header) -> list[str]:
    record = header.info.get("CSQ")
    if record is None:
        raise InputError("no CSQ field in the header: not VEP output (run VEP with --vcf)")
    description = record.description
    if "Format: " not in description:
        raise InputError(f"the CSQ header has no 'Format:' list: {description[:120]!r}")
    return description.split("Format: ", 1)[1].strip().strip('"').split("|")


@dataclass
class VepTable:
    """Rows from a VEP-annotated VCF, for the variants the sample carries."""
    path: Path
    summary: Summary = field(default_factory=Summary)

    def rows(self, sample: str, column: str | None) -> Iterator[Row]:
        with open_vcf(self.path) as vcf:
            try:
                fmt = csq_format(vcf.header)
            except InputError as exc:
                raise InputError(f"{self.path}: {exc}") from None
        want = {name: fmt.index(name) for name in ("Allele", "Consequence", "IMPACT", "SYMBOL",
                                                   "Gene", "Feature") if name in fmt}
        missing = {"Allele", "Consequence"} - set(want)
        if missing:
            raise InputError(f"{self.path}: CSQ lacks {', '.join(sorted(missing))}")
        allele_num = fmt.index("ALLELE_NUM") if "ALLELE_NUM" in fmt else None
        started = time.perf_counter()
        genes: set[str] = set()
        csq_of = _csq_reader(self.path)
        for call in calls(self.path, column):
            self.summary.variants += 1
            entries = csq_of(call)
            for alt in call.alts:
                mine = vep_allele(call.ref, call.all_alts, alt)
                number = str(call.all_alts.index(alt) + 1)
                for entry in entries:
                    cols = entry.split("|")
                    if allele_num is not None and cols[allele_num]:
                        if cols[allele_num] != number:
                            continue
                    elif cols[want["Allele"]] != mine:
                        continue
                    terms = [t for t in cols[want["Consequence"]].split("&") if t]
                    top = most_severe({t for t in terms if t in IMPACT}) if terms else ""
                    gene = cols[want["SYMBOL"]] if "SYMBOL" in want else ""
                    impact = cols[want["IMPACT"]] if "IMPACT" in want else IMPACT.get(top, "")
                    if inside_gene(gene, top):
                        genes.add(gene)
                    self.summary.rows += 1
                    yield Row(sample, call.contig, call.pos, call.ref, alt, gene,
                              cols[want["Gene"]] if "Gene" in want else "",
                              cols[want["Feature"]] if "Feature" in want else "",
                              "&".join(terms), impact)
        self.summary.genes = genes
        self.summary.seconds = time.perf_counter() - started


def _csq_reader(path: Path):
    """call -> its CSQ entries, reading the file alongside `calls` (same record order)."""
    vcf = open_vcf(path)
    records = iter(vcf)

    def entries(call) -> list[str]:
        for rec in records:
            if rec.pos == call.pos and rec.chrom == call.contig:
                return list(rec.info.get("CSQ") or ())
        return []
    return entries


@dataclass
class VepCommand:
    """How to run VEP here: the executable (or a container command ending in it), its
    offline cache, and extra options."""
    executable: list[str]
    cache: str | None = None
    assembly: str | None = None
    species: str = "homo_sapiens"
    fork: int = 1
    extra: list[str] = field(default_factory=list)

    def argv(self, vcf: Path, out: Path) -> list[str]:
        argv = [*self.executable, "--input_file", str(vcf), "--output_file", str(out),
                "--vcf", "--compress_output", "bgzip", "--species", self.species,
                "--symbol", "--allele_number", "--no_stats", "--force_overwrite"]
        if self.cache:
            argv += ["--offline", "--cache", "--dir_cache", self.cache]
        if self.assembly:
            argv += ["--assembly", self.assembly]
        if self.fork > 1:
            argv += ["--fork", str(self.fork)]
        return argv + list(self.extra)

    def run(self, vcf: Path, out: Path, timeout: float | None = None) -> Path:
        argv = self.argv(vcf, out)
        log.info("VEP: %s", shlex.join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except FileNotFoundError:
            raise InputError(f"VEP executable {self.executable[0]!r} not found (set "
                             "vep.executable, or a container command)") from None
        except subprocess.TimeoutExpired:
            raise InputError(f"VEP on {vcf} ran past {timeout} s") from None
        if proc.returncode:
            lines = [ln.strip() for ln in proc.stderr.splitlines()
                     if ln.strip() and set(ln.strip()) != {"-"} and "EXCEPTION" not in ln]
            raise InputError(f"VEP failed on {vcf} (exit {proc.returncode}): "
                             f"{' / '.join(lines[-4:])[-800:]}")
        if not out.exists():
            raise InputError(f"VEP on {vcf} exited 0 but wrote no {out}")
        return out
