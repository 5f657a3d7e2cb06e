"""Reading cell painting fields as users have them on disk.

Two layouts, both indexed by a metadata CSV with one row per field (a CellProfiler LoadData
CSV is one): per-channel image files (`FileName_Orig<Channel>` columns, with a shared
`PathName` or per-channel `PathName_Orig<Channel>` folders), or one multi-channel TIFF stack
per field (`FileName_Stack`; OME-TIFF channel names decide the order when present). Other
column names are mapped with `ColumnMap`. Every problem names the CSV row and the file.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field as PydanticField

from hpcray.errors import HpcrayError
from hpcray.spec.models import StrictModel

log = logging.getLogger("hpcray.cellpainting")

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


class DataError(HpcrayError):
    """A field that cannot be read: the message names the CSV row and the file."""


class ColumnMap(StrictModel):
    """Which metadata columns hold what. Defaults follow CellProfiler's LoadData names."""

    plate: str = "Metadata_Plate"
    well: str = "Metadata_Well"
    site: str = "Metadata_Site"
    dose: str = PydanticField("Metadata_Dose", description="Radiation dose (Gy); the label.")
    time_point: str = "Metadata_TimePoint_h"
    file_prefix: str = PydanticField("FileName_Orig", description="+ channel name")
    path_prefix: str = PydanticField("PathName_Orig", description="+ channel name, or ...")
    path: str = PydanticField("PathName", description="... one folder for every channel")
    stack: str = PydanticField("FileName_Stack", description="a multi-channel TIFF per row")
    channels: dict[str, str] = PydanticField(
        default_factory=dict, description="Your channel names for ours, e.g. {Hoechst: DNA}.")


@dataclass(frozen=True)
class Field:
    """One imaged field: where its channels are and what it is labelled with."""

    row: int                      # 1-based line in the CSV (the header is line 1)
    plate: str
    well: str
    site: str
    dose: float | None
    time_point: float | None
    files: tuple[Path, ...]       # one per channel in CHANNELS order, or one stack
    stack: bool = False

    @property
    def name(self) -> str:
        return f"{self.plate}/{self.well}/s{self.site}"


def read_fields(csv_path: str | Path, columns: ColumnMap | None = None,
                image_root: str | Path | None = None, need_dose: bool = True,
                on_error: Literal["raise", "skip"] = "raise") -> list[Field]:
    """Every field the CSV lists. Relative folders are taken from `image_root`, else from the
    CSV's directory; absolute lab paths that do not exist here fall back to `image_root`.
    With on_error="skip", bad rows are left out and counted in one warning."""
    columns = columns or ColumnMap()
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        layout = _layout(header, columns, csv_path)
        fields, skipped = [], []
        for line, row in enumerate(reader, start=2):
            try:
                fields.append(_field(row, line, layout, columns, root, need_dose, csv_path))
            except DataError as exc:
                if on_error == "raise":
                    raise
                skipped.append(str(exc))
    if skipped:
        log.warning("%s: skipped %d row(s); first: %s", csv_path, len(skipped), skipped[0])
    if not fields:
        raise DataError(f"{csv_path}: no usable field" + (f" ({len(skipped)} skipped)"
                                                          if skipped else ""))
    return fields


def _layout(header: Sequence[str], columns: ColumnMap, csv_path: Path) -> str:
    if columns.stack in header:
        return "stack"
    theirs = {ours: theirs for theirs, ours in columns.channels.items()}
    missing = [c for c in CHANNELS if columns.file_prefix + theirs.get(c, c) not in header]
    if missing:
        raise DataError(
            f"{csv_path}: no image columns for channel(s) {', '.join(missing)}: expected "
            f"{columns.file_prefix}<Channel> for {', '.join(CHANNELS)} or one "
            f"{columns.stack!r} column; the header has {', '.join(header)}. Map other names "
            "with columns.channels")
    return "channels"


def _number(row: dict, column: str, line: int, csv_path: Path, required: bool) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        if required:
            raise DataError(f"{csv_path} line {line}: column {column!r} is empty or missing")
        return None
    try:
        value = float(text.rstrip("Gy").strip()) if text.endswith("Gy") else float(text)
    except ValueError:
        raise DataError(f"{csv_path} line {line}: column {column!r} must be a number, "
                        f"got {text!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{csv_path} line {line}: column {column!r} is {text!r}")
    return value


def _field(row: dict, line: int, layout: str, columns: ColumnMap, root: Path, need_dose: bool,
           csv_path: Path) -> Field:
    dose = _number(row, columns.dose, line, csv_path, need_dose)
    time_point = _number(row, columns.time_point, line, csv_path, False)
    if layout == "stack":
        names = [(row.get(columns.stack) or "").strip()]
        folders = [(row.get(columns.path) or "").strip()]
    else:
        theirs = {ours: theirs for theirs, ours in columns.channels.items()}
        keys = [theirs.get(c, c) for c in CHANNELS]
        names = [(row.get(columns.file_prefix + k) or "").strip() for k in keys]
        folders = [(row.get(columns.path_prefix + k) or row.get(columns.path) or "").strip()
                   for k in keys]
    if not any(names):
        raise DataError(f"{csv_path} line {line}: the row names no image files")
    files = []
    for channel, name, folder in zip(CHANNELS if layout == "channels" else ["stack"], names,
                                     folders, strict=False):
        if not name:
            raise DataError(f"{csv_path} line {line}: no file for channel {channel}")
        path = _locate(name, folder, root)
        if path is None:
            raise DataError(f"{csv_path} line {line}: {channel} image {name!r} not found "
                            f"(looked in {folder or root})")
        files.append(path)
    return Field(row=line, plate=row.get(columns.plate, "") or "", well=row.get(columns.well, "")
                 or "", site=row.get(columns.site, "") or "", dose=dose, time_point=time_point,
                 files=tuple(files), stack=layout == "stack")


def _locate(name: str, folder: str, root: Path) -> Path | None:
    candidates = []
    if folder:
        folder_path = Path(folder)
        candidates.append(folder_path / name if folder_path.is_absolute() else root / folder
                          / name)
    candidates.append(root / name)
    for path in candidates:
        if path.is_file():
            return path
    return None


_OME_CHANNEL = re.compile(r'<Channel\b[^>]*\bName="([^"]+)"')


def load_field(field: Field, columns: ColumnMap | None = None) -> np.ndarray:
    """The field as a (5, H, W) array in CHANNELS order, in its stored integer type. Every
    channel must be a 2-D 8- or 16-bit image of the same size."""
    import tifffile

    if field.stack:
        path = field.files[0]
        try:
            with tifffile.TiffFile(path) as tif:
                data = tif.asarray()
                names = _OME_CHANNEL.findall(tif.ome_metadata or "")
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise DataError(f"line {field.row}: cannot read {path}: {exc}") from None
        if data.ndim != 3 or data.shape[0] != len(CHANNELS):
            raise DataError(f"line {field.row}: {path} has shape {data.shape}; a stack must be "
                            f"(channels={len(CHANNELS)}, height, width)")
        if names:
            mapping = (columns or ColumnMap()).channels
            names = [mapping.get(n, n) for n in names]
            if sorted(names) != sorted(CHANNELS):
                raise DataError(f"line {field.row}: {path} has channels {names}; expected "
                                f"{', '.join(CHANNELS)} (map names with columns.channels)")
            data = data[[names.index(c) for c in CHANNELS]]
        _check_depth(data, path, field.row)
        return data
    planes: list[np.ndarray] = []
    for channel, path in zip(CHANNELS, field.files, strict=True):
        try:
            plane = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") \
                else _read_other(path)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise DataError(f"line {field.row}: cannot read {channel} image {path}: {exc}") \
                from None
        plane = np.squeeze(plane)
        if plane.ndim != 2:
            raise DataError(f"line {field.row}: {channel} image {path} has shape "
                            f"{plane.shape}; expected one 2-D plane")
        _check_depth(plane, path, field.row)
        if planes and plane.shape != planes[0].shape:
            raise DataError(f"line {field.row}: {channel} image {path} is {plane.shape}, the "
                            f"DNA image is {planes[0].shape}")
        planes.append(plane)
    return np.stack(planes)


def _read_other(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


def _check_depth(data: np.ndarray, path: Path, row: int) -> None:
    if data.dtype not in (np.uint8, np.uint16):
        raise DataError(f"line {row}: {path} is {data.dtype}; expected 8- or 16-bit "
                        "unsigned integers")
