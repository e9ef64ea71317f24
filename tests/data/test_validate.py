"""The Great Expectations suite passes on real data and names the file for each kind of bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from nucseg import io
from nucseg.core.manifest import build_manifest
from nucseg.mlops import tracking
from nucseg.stages.validate import ValidationFailed, run


def run_validate(params, train_dir: Path, tmp_path: Path):
    params["data"].update(train_dir=str(train_dir), test_dir=None, limit=0)
    report = tmp_path / "reports" / "validation.md"
    manifest = tmp_path / "manifest.csv"
    summary = tmp_path / "summary.json"
    try:
        result = run(params, manifest_path=manifest, report_path=report, summary_path=summary)
    except ValidationFailed as err:
        return err, report.read_text(), manifest, summary
    return result, report.read_text(), manifest, summary


def first_sample(train_dir: Path) -> Path:
    return sorted(train_dir.iterdir())[0]


def test_suite_passes_on_real_slice(params, real_slice, tmp_path):
    summary, report, manifest, summary_file = run_validate(params, real_slice, tmp_path)
    assert "PASSED" in report
    assert summary["images"] == {"train": 4}
    assert summary["masks"] == sum(len(list((s / "masks").iterdir())) for s in real_slice.iterdir())
    assert json.loads(summary_file.read_text()) == summary
    assert manifest.exists()
    # the data version the later stages depend on for their runs' lineage (data.dvc's md5)
    assert summary["data_md5"] == tracking.data_md5() and len(summary["data_md5"]) == 36  # md5 + ".dir"


def break_unreadable_png(sample: Path) -> Path:
    image = next((sample / "images").iterdir())
    image.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return image


def break_missing_masks(sample: Path) -> Path:
    shutil.rmtree(sample / "masks")
    return sample / "masks"


def break_mask_size(sample: Path) -> Path:
    mask = sorted((sample / "masks").iterdir())[0]
    io.write_png(mask, np.full((17, 23), 255, np.uint8))
    return mask


def break_empty_mask(sample: Path) -> Path:
    mask = sorted((sample / "masks").iterdir())[0]
    shape = io.read_mask(mask).shape
    io.write_png(mask, np.zeros(shape, np.uint8))
    return mask


def break_overlap(sample: Path) -> Path:
    mask = sorted((sample / "masks").iterdir())[0]
    shutil.copy(mask, sample / "masks" / "duplicate_of_first.png")
    return sample / "masks"


def break_dimensions(sample: Path) -> Path:
    image = next((sample / "images").iterdir())
    image.unlink()
    bad = image.with_suffix(".tif")
    tifffile.imwrite(bad, np.zeros((2, 3, 32, 32), np.uint8))
    return bad


CASES = [
    (break_unreadable_png, "every image and mask file can be decoded", "cannot decode image"),
    (break_missing_masks, "has a masks folder with at least one mask", "masks folder missing"),
    (break_mask_size, "every mask has the size of its image", "mask is 23x17"),
    (break_empty_mask, "no mask is all zero", "mask is all zero"),
    (break_overlap, "overlapping masks only graze (at most 2 px wide)", "masks overlap"),
    (break_dimensions, "every image and mask file can be decoded", "expected a 2-D or 3-D image"),
]


@pytest.mark.parametrize("breaker, rule, problem", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_data_fails_with_named_file(params, real_slice, tmp_path, breaker, rule, problem):
    bad_path = breaker(first_sample(real_slice))
    error, report, manifest, summary = run_validate(params, real_slice, tmp_path)
    assert isinstance(error, ValidationFailed)
    assert "FAILED" in report
    assert any(line.startswith("## Broken:") and rule in line for line in report.splitlines()), report
    offending = {line for line in report.splitlines() if line.startswith("- ")}
    assert len(offending) == 1, report  # only the broken image is named (under each rule it broke)
    (line,) = offending
    assert str(bad_path) in line and problem in line
    assert not manifest.exists() and not summary.exists()  # no manifest passed off as good


def test_cli_exits_nonzero_and_points_to_report(params, real_slice, tmp_path, monkeypatch):
    import yaml

    from nucseg.cli import app

    break_empty_mask(first_sample(real_slice))
    params["data"].update(train_dir=str(real_slice), test_dir=None)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--params", str(params_file)])
    assert result.exit_code == 1
    assert "expectation(s) failed; see reports/validation.md" in result.output
    assert "no mask is all zero" in (tmp_path / "reports" / "validation.md").read_text()


def test_manifest_columns_describe_each_image(real_slice):
    manifest = build_manifest(real_slice)
    row = manifest.iloc[0]
    sample = first_sample(real_slice)
    image = io.read_image(next((sample / "images").iterdir()))
    assert (row.height, row.width) == image.shape[:2]
    assert row.n_masks == len(list((sample / "masks").iterdir()))
    assert 0 < row.mask_coverage < 1
    assert row.overlap_pixels == 0 and row.problems == ""


# ---- overlapping masks: a 1-2 px overlap is a warning, a large one a failure ----

def disk_sample(root: Path, name: str, gap: int) -> Path:
    """A DSB sample with two disks reaching 11 pixels from their centres, 23 - gap apart: gap > 0
    makes their masks overlap by `gap` pixels along the line joining them."""
    from skimage.draw import disk

    sample = root / name
    shape = (64, 80)
    image = np.full(shape + (3,), 20, np.uint8)
    for k, centre in enumerate([(32, 24), (32, 24 + 23 - gap)]):
        mask = np.zeros(shape, np.uint8)
        mask[disk(centre, 12, shape=shape)] = 255
        image[mask > 0] = 200
        io.write_png(sample / "masks" / f"m{k}.png", mask)
    io.write_png(sample / "images" / f"{name}.png", image)
    return sample


@pytest.mark.parametrize("gap", [1, 2])
def test_small_overlap_passes_with_a_warning(params, tmp_path, gap):
    train_dir = tmp_path / "stage1_train"
    disk_sample(train_dir, "touching", gap)
    disk_sample(train_dir, "apart", -4)
    summary, report, manifest, _ = run_validate(params, train_dir, tmp_path)
    assert "PASSED" in report and "1 image(s) with warnings" in report
    warnings = report.split("## Warnings")[1]
    assert "touching.png" in warnings and "apart.png" not in warnings
    assert summary["overlap_warnings"] == 1
    row = next(r for r in __import__("pandas").read_csv(manifest).itertuples() if r.id == "touching")
    assert row.overlap_pixels > 0 and row.overlap_width == gap


def test_large_overlap_fails(params, tmp_path):
    train_dir = tmp_path / "stage1_train"
    disk_sample(train_dir, "merged", 12)  # half a disk claimed twice
    error, report, manifest, _ = run_validate(params, train_dir, tmp_path)
    assert isinstance(error, ValidationFailed) and "FAILED" in report
    assert "## Broken: overlapping masks only graze (at most 2 px wide)" in report
    assert "## Broken: masks of one image overlap on at most 5.00% of its nucleus pixels" in report
    assert "merged.png" in report and not manifest.exists()
