"""A small synthetic cell painting plate in the same on-disk format as a real one: per-channel
16-bit TIFFs named as an Opera Phenix writes them, and a LoadData-style CSV with a dose column.

Dose changes morphology the way the model must learn it: nuclei grow and carry more bright
foci (DNA), mitochondrial signal drops and the cytoplasm (ER, AGP) spreads. Cells are placed
at random with random shapes, so no single pixel tells the dose.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hpcray.pipelines.cellpainting.data import CHANNELS

DOSES = (0.0, 0.5, 1.0, 2.0)
PHENIX_CHANNEL = {"ER": 2, "AGP": 3, "Mito": 4, "DNA": 5, "RNA": 6}  # ch numbers as in real files


def _cell(planes: np.ndarray, rng: np.random.Generator, y: float, x: float, level: int) -> None:
    size = planes.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    r_nuc = rng.uniform(3.0, 4.0) * (1 + 0.22 * level)   # nuclei grow with dose
    r_cyt = r_nuc * rng.uniform(1.9, 2.3) * (1 + 0.08 * level)
    ecc = rng.uniform(0.75, 1.0)
    dy, dx = yy - y, xx - x
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    d_nuc = (u / r_nuc) ** 2 + (v / (r_nuc * ecc)) ** 2
    d_cyt = (u / r_cyt) ** 2 + (v / (r_cyt * ecc)) ** 2
    nucleus = np.clip(1.2 - d_nuc, 0, 1)
    cytoplasm = np.clip(1.1 - d_cyt, 0, 1) * (d_nuc > 0.8)
    planes[0] += 9000 * nucleus
    for _ in range(int(rng.poisson(1 + 3 * level))):  # DNA damage foci
        fy, fx = y + rng.normal(0, r_nuc / 2.5), x + rng.normal(0, r_nuc / 2.5)
        planes[0] += 14000 * np.exp(-((yy - fy) ** 2 + (xx - fx) ** 2) / 1.2)
    planes[1] += 6000 * cytoplasm * rng.uniform(0.8, 1.2)              # ER
    planes[2] += 5000 * (cytoplasm + 0.5 * nucleus)                     # RNA
    planes[3] += 4000 * cytoplasm * (1 + 0.25 * level)                  # AGP
    planes[4] += 8000 * cytoplasm * (1 - 0.2 * level) * rng.uniform(0.8, 1.2)  # Mito


def make_field(rng: np.random.Generator, level: int, size: int = 96,
               cells: int = 6) -> np.ndarray:
    """One (5, size, size) uint16 field at dose index `level`."""
    planes = np.zeros((len(CHANNELS), size, size), np.float32)
    for _ in range(cells):
        y, x = rng.uniform(8, size - 8, 2)
        _cell(planes, rng, y, x, level)
    planes += rng.normal(600, 120, planes.shape)  # camera offset and noise
    return np.clip(planes, 0, 65535).astype(np.uint16)


def write_plate(out: str | Path, fields_per_dose: int = 48, size: int = 96,
                doses: tuple[float, ...] = DOSES, seed: int = 0,
                plate: str = "SYN0001") -> Path:
    """Writes images/ and fields.csv under `out`; returns the CSV's path."""
    import tifffile

    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for level, dose in enumerate(doses):
        for i in range(fields_per_dose):
            r, c, site = 1 + level, 1 + i // 9, 1 + i % 9
            well = f"{chr(ord('A') + r - 1)}{c:02d}"
            data = make_field(rng, level, size)
            row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
                   "Metadata_Dose": dose, "Metadata_TimePoint_h": 24, "PathName": "images"}
            for channel, plane in zip(CHANNELS, data, strict=True):
                name = f"r{r:02d}c{c:02d}f{site:02d}p01-ch{PHENIX_CHANNEL[channel]}sk1fk1fl1.tiff"
                tifffile.imwrite(images / name, plane)
                row[f"FileName_Orig{channel}"] = name
            rows.append(row)
    path = out / "fields.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
