"""The annotation service: one API (`annotate` a sample's VCF into the annotation table)
over interchangeable backends. Local replicas run the built-in annotator or Ensembl VEP; a
VEP-REST server joins as a remote endpoint of the same service (remote_vep.py).

    services:
      - name: annotator
        deployment: hpcray.pipelines.signature.service:Annotator
        args: {backend: builtin, gene_model: genes.gtf.gz, fasta: genome.fa}
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal, Protocol, overload

import hpcray
from hpcray.pipelines.signature.errors import InputError
from hpcray.pipelines.signature.table import write_rows


class SampleAnnotator(Protocol):
    name: str

    def annotate(self, vcf: str | Path, sample: str, column: str | None = None): ...


def run_path(value: str, run_dir: Path | None = None) -> Path:
    """A path of the pipeline's files: `{run_dir}` filled in, and a relative one taken from
    the run directory (where the job starts and the setup lines write)."""
    run_dir = run_dir or hpcray.context().run_dir or Path(".")
    value = value.replace("{run_dir}", str(run_dir))
    return Path(value) if os.path.isabs(value) else run_dir / value


@overload
def _resolve(path: str) -> str: ...


@overload
def _resolve(path: None) -> None: ...


def _resolve(path: str | None) -> str | None:
    """`run_path` of an optional option as text: None stays None."""
    return None if path is None else str(run_path(path))


def annotate_with(annotator: SampleAnnotator, payload: dict[str, Any]) -> dict[str, Any]:
    """Annotate one sample into its table; the summary every backend returns."""
    if not isinstance(payload, dict) or not payload.get("vcf") or not payload.get("out"):
        raise InputError("annotate needs {'vcf': path, 'out': path, 'sample': name}")
    vcf, out = Path(payload["vcf"]), Path(payload["out"])
    sample = str(payload.get("sample") or vcf.name.split(".")[0])
    started = time.perf_counter()
    rows, summary = annotator.annotate(vcf, sample, payload.get("column"))
    written = write_rows(out, rows)
    if summary.variants == 0:
        out.unlink(missing_ok=True)
        where = f" (sample column {payload['column']!r})" if payload.get("column") else ""
        raise InputError(f"{vcf}: empty sample{where}: no variant record with a "
                         "non-reference genotype")
    return {"sample": sample, "vcf": str(vcf), "out": str(out), "variants": summary.variants,
            "rows": written, "genes": len(summary.genes or ()),
            "absent_contigs": dict(summary.absent_contigs or {}),
            "seconds": time.perf_counter() - started, "backend": annotator.name}


class _Builtin:
    def __init__(self, gene_model: str, fasta: str | None, rename_contigs: bool) -> None:
        from hpcray.pipelines.signature.builtin import BuiltinAnnotator

        self.impl = BuiltinAnnotator(gene_model, fasta, rename_contigs=rename_contigs)
        self.name = "builtin"

    def annotate(self, vcf, sample, column=None):
        return self.impl.annotate(vcf, sample, column)


class _Vep:
    def __init__(self, options: dict[str, Any]) -> None:
        from hpcray.pipelines.signature.vep import VepCommand

        exe = options.get("executable", "vep")
        container = options.get("container") or []
        self.command = VepCommand(
            [*container, *([exe] if isinstance(exe, str) else exe)],
            cache=_resolve(options.get("cache")), assembly=options.get("assembly"),
            species=options.get("species", "homo_sapiens"), fork=int(options.get("fork", 1)),
            extra=list(options.get("extra", [])))
        self.timeout = options.get("timeout")
        self.name = "vep"

    def annotate(self, vcf, sample, column=None):
        from hpcray.pipelines.signature.vep import VepTable

        out = Path(str(vcf)).name.split(".")[0]
        run_dir = hpcray.context().run_dir or Path(".")
        target = run_dir / "signature" / "vep" / f"{sample}-{out}.vcf.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.command.run(Path(vcf), target, self.timeout)
        table = VepTable(target)
        return table.rows(sample, column), table.summary


class Annotator:
    """A Ray Serve service class. `annotate` runs in a thread, so the replica keeps
    answering health checks while a large sample is annotated; `concurrency` samples at
    once per replica."""

    def __init__(self, backend: Literal["builtin", "vep"] = "builtin",
                 gene_model: str | None = None, fasta: str | None = None,
                 rename_contigs: bool = False, vep: dict[str, Any] | None = None,
                 concurrency: int = 1) -> None:
        if backend == "builtin":
            if not gene_model:
                raise InputError("the built-in annotator needs gene_model (a GTF or GFF3)")
            self.backend: SampleAnnotator = _Builtin(_resolve(gene_model), _resolve(fasta),
                                                     rename_contigs)
        elif backend == "vep":
            self.backend = _Vep(vep or {})
        else:
            raise InputError(f"annotation backend {backend!r}: use builtin or vep (VEP-REST "
                             "servers are remote endpoints: kind: vep_rest)")
        self._slots = threading.BoundedSemaphore(max(1, concurrency))

    def _annotate(self, payload: dict[str, Any]) -> dict[str, Any]:
        with self._slots:
            return annotate_with(self.backend, payload)

    async def annotate(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._annotate, payload)

    def info(self, payload: Any = None) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.backend.name}
        impl = getattr(self.backend, "impl", None)
        if impl is not None:
            info.update(gene_model=impl.model.path, transcripts=len(impl.model.transcripts),
                        fasta=str(impl.reference.path) if impl.reference else None)
        return info

    def genes(self, payload: Any = None) -> list[str]:
        """The gene model's gene names (the enrichment universe); [] for VEP."""
        impl = getattr(self.backend, "impl", None)
        return sorted(impl.model.gene_names) if impl is not None else []

    def contigs(self, payload: Any = None) -> dict[str, Any] | None:
        """The gene model's contig names, for the driver's check of each VCF before it is
        sent (whichever instance then annotates it); None for VEP."""
        impl = getattr(self.backend, "impl", None)
        if impl is None:
            return None
        return {"contigs": sorted(impl.model.contigs), "rename_contigs": impl.rename_contigs,
                "gene_model": impl.model.path}

    def check_health(self) -> None:
        return None
