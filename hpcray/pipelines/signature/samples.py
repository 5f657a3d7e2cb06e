"""The sample sheet: which VCF (and which sample column in it) is which sample, at which
dose and time point. Tab- or comma-separated, with a header."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from hpcray.pipelines.signature.errors import InputError

REQUIRED = ("sample", "vcf", "dose")


@dataclass(frozen=True)
class Sample:
    name: str
    vcf: Path
    dose: float
    time: float = 0.0
    column: str | None = None  # the VCF's sample column; default: its only one, or `name`


def read_samples(path: str | Path) -> list[Sample]:
    """Rows of the sheet; relative VCF paths are relative to the sheet. Errors name the
    line and the column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sample sheet not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}:1: the header lacks {', '.join(missing)} (columns: sample, "
                         "vcf, dose, and optionally time, column)")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(reader, 2):
        name = (row.get("sample") or "").strip()
        if not name:
            raise InputError(f"{path}:{number}: sample: empty")
        if name in seen:
            raise InputError(f"{path}:{number}: sample {name!r} already on line {seen[name]}")
        seen[name] = number
        values = {}
        for key in ("dose", "time"):
            raw = (row.get(key) or "").strip()
            if not raw and key == "time":
                values[key] = 0.0
                continue
            try:
                values[key] = float(raw)
            except ValueError:
                raise InputError(f"{path}:{number}: {key}: {raw!r} is not a number") from None
        vcf = Path((row.get("vcf") or "").strip())
        if not str(vcf) or str(vcf) == ".":
            raise InputError(f"{path}:{number}: vcf: empty")
        if not vcf.is_absolute():
            vcf = path.parent / vcf
        samples.append(Sample(name, vcf, values["dose"], values["time"],
                              (row.get("column") or "").strip() or None))
    if not samples:
        raise InputError(f"{path}: no samples")
    return samples
