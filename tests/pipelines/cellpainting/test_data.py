"""The reader on real files (../shared/data/cellpainting, read in place) in both layouts, the
synthetic plate, and every kind of bad input named by file and row."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hpcray.pipelines.cellpainting.data import (
    CHANNELS,
    ColumnMap,
    DataError,
    load_field,
    read_fields,
)
from hpcray.pipelines.cellpainting.synthetic import write_plate
from tests.conftest import REPO, SHARED_DATA

REAL = SHARED_DATA / "cellpainting"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (shared test data) is absent")


def test_per_channel_tiffs_from_the_real_loaddata_index():
    (field,) = read_fields(REAL / "images.csv", need_dose=False)
    assert (field.plate, field.well, field.site, field.time_point) == ("BR00143976", "C03", "3",
                                                                      24.0)
    assert [p.name for p in field.files] == [  # the Phenix channel numbers, mapped by the CSV
        "r03c03f03p01-ch5sk1fk1fl1.tiff", "r03c03f03p01-ch2sk1fk1fl1.tiff",
        "r03c03f03p01-ch6sk1fk1fl1.tiff", "r03c03f03p01-ch3sk1fk1fl1.tiff",
        "r03c03f03p01-ch4sk1fk1fl1.tiff"]
    data = load_field(field)
    assert data.shape == (5, 512, 512) and data.dtype == np.uint16
    assert (data[0] == tifffile.imread(REAL / "images" / "r03c03f03p01-ch5sk1fk1fl1.tiff")).all()


def test_cellprofiler_loaddata_with_lab_paths_falls_back_to_image_root(caplog):
    """The real LoadData CSV: 9 sites with the lab's absolute folders; only site 3's images
    are here. Raising names the first missing file and its line; skipping counts the rest."""
    csv_path = REAL / "load_data_BR00143976_C03.csv"
    with pytest.raises(DataError, match=r"line 2: DNA image 'r03c03f01p01-ch5sk1fk1fl1.tiff' "
                                        r"not found"):
        read_fields(csv_path, image_root=REAL / "images", need_dose=False)
    with caplog.at_level(logging.WARNING, logger="hpcray.cellpainting"):
        (field,) = read_fields(csv_path, image_root=REAL / "images", need_dose=False,
                               on_error="skip")
    assert field.site == "3" and field.row == 4
    assert "skipped 8 row(s)" in caplog.text


def test_multichannel_ome_tiff_stack_in_channel_order(tmp_path):
    index = tmp_path / "stacks.csv"
    index.write_text("Metadata_Plate,Metadata_Well,Metadata_Site,Metadata_Dose,FileName_Stack,"
                     f"PathName\nBR00143976,C03,3,0,BR00143976_C03_s3_5ch_256.ome.tif,"
                     f"{REAL / 'images'}\n")
    (field,) = read_fields(index)
    assert field.stack and field.dose == 0.0
    data = load_field(field)
    assert data.shape == (5, 256, 256) and data.dtype == np.uint16
    # the stack is the centre of the per-channel crops: channel by channel the same pixels
    (single,) = read_fields(REAL / "images.csv", need_dose=False)
    full = load_field(single)
    assert (data == full[:, 128:384, 128:384]).all()


def test_user_column_and_channel_names_are_mapped(tmp_path):
    names = {"Hoechst": "DNA", "ConA": "ER", "Syto": "RNA", "Phalloidin": "AGP", "MitoT": "Mito"}
    files = ["r03c03f03p01-ch5sk1fk1fl1.tiff", "r03c03f03p01-ch2sk1fk1fl1.tiff",
             "r03c03f03p01-ch6sk1fk1fl1.tiff", "r03c03f03p01-ch3sk1fk1fl1.tiff",
             "r03c03f03p01-ch4sk1fk1fl1.tiff"]
    index = tmp_path / "mine.csv"
    with open(index, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["plate", "well", "dose_gy", "folder", *[f"img_{n}" for n in names]])
        w.writerow(["P1", "C03", "2 Gy", str(REAL / "images"), *files])
    columns = ColumnMap(plate="plate", well="well", dose="dose_gy", path="folder",
                        file_prefix="img_", channels=names)
    (field,) = read_fields(index, columns)
    assert field.dose == 2.0 and field.files[0].name == files[0]


def _plate(tmp_path: Path) -> Path:
    return write_plate(tmp_path / "plate", fields_per_dose=2, size=32)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rewrite(path: Path, change) -> None:
    rows = _rows(path)
    change(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_bad_input_is_named_by_file_and_line(tmp_path):
    csv_path = _plate(tmp_path)
    images = csv_path.parent / "images"
    rows = _rows(csv_path)

    _rewrite(csv_path, lambda r: r[2].update(Metadata_Dose="high"))
    with pytest.raises(DataError, match=r"fields.csv line 4: column 'Metadata_Dose' must be "
                                        r"a number, got 'high'"):
        read_fields(csv_path)

    _rewrite(csv_path, lambda r: (r[2].update(Metadata_Dose="0"),
                                  r[1].update({f"FileName_Orig{c}": "" for c in CHANNELS})))
    with pytest.raises(DataError, match="line 3: the row names no image files"):
        read_fields(csv_path)

    _rewrite(csv_path, lambda r: r[1].update({f"FileName_Orig{c}": rows[1][f"FileName_Orig{c}"]
                                              for c in CHANNELS}))
    (images / rows[0]["FileName_OrigMito"]).unlink()
    with pytest.raises(DataError, match=r"line 2: Mito image '.*ch4sk1fk1fl1.tiff' not found"):
        read_fields(csv_path)
    assert len(read_fields(csv_path, on_error="skip")) == 7  # skipped, counted

    fields = read_fields(csv_path, on_error="skip")
    tifffile.imwrite(images / rows[1]["FileName_OrigER"], np.zeros((32, 32), np.float32))
    with pytest.raises(DataError, match=r"line 3: .*ch2sk1fk1fl1.tiff is float32; expected 8- "
                                        r"or 16-bit"):
        load_field(fields[0])
    tifffile.imwrite(images / rows[1]["FileName_OrigER"], np.zeros((16, 32), np.uint16))
    with pytest.raises(DataError, match=r"line 3: ER image .* is \(16, 32\), the DNA image is "
                                        r"\(32, 32\)"):
        load_field(fields[0])


def test_a_csv_without_image_columns_says_what_it_expected(tmp_path):
    index = tmp_path / "x.csv"
    index.write_text("Metadata_Plate,Metadata_Dose,Image\nP,0,a.tif\n")
    with pytest.raises(DataError, match="no image columns for channel.*FileName_Orig<Channel>"):
        read_fields(index)


def test_synthetic_plate_is_real_format_and_dose_changes_morphology(tmp_path):
    csv_path = write_plate(tmp_path, fields_per_dose=6, size=64, seed=3)
    fields = read_fields(csv_path)
    assert len(fields) == 24 and {f.dose for f in fields} == {0.0, 0.5, 1.0, 2.0}
    assert all(p.name.endswith("sk1fk1fl1.tiff") for f in fields for p in f.files)
    bright = {}
    for f in fields:
        data = load_field(f)
        assert data.shape == (5, 64, 64) and data.dtype == np.uint16
        bright.setdefault(f.dose, []).append((data[0] > 3000).mean())  # nuclear area
    area = [np.mean(bright[d]) for d in sorted(bright)]
    assert area == sorted(area) and area[-1] > 1.5 * area[0]


def test_a_mistyped_pipeline_option_is_named_with_its_line_before_submission(tmp_path):
    from hpcray.errors import SpecError
    from hpcray.spec import load_workflow

    text = (REPO / "examples" / "cellpainting.yaml").read_text()
    path = tmp_path / "cp.yaml"
    path.write_text(text.replace("      trials: 4", "      trails: 4"))
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    line = text.splitlines().index("      trials: 4") + 1
    message = str(info.value)
    assert f"cp.yaml:{line}" in message and "driver.args.search.trails" in message
    assert "unknown key 'trails'" in message and "trials" in message
    path.write_text(text.replace("crop: 48", "crop: big"))
    with pytest.raises(SpecError, match=r"driver.args.model.crop"):
        load_workflow(path)
    load_workflow(REPO / "examples" / "cellpainting.yaml")  # the example itself is valid
