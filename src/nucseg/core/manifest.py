"""The raw data's manifest: one row per image with what a check needs (size, colour, masks
present and readable, their coverage and overlaps), so data problems are found by reading
this table rather than by a network failing on them later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg import io


MANIFEST_COLUMNS = [
    "id", "split", "image_path", "height", "width", "channels", "dtype", "colour",
    "masks_dir_present", "missing_masks", "n_masks", "mask_coverage", "wrong_size_masks",
    "empty_masks", "overlap_pixels", "overlap_fraction", "overlap_width", "unreadable_files", "problems",
]


def describe_sample(image_id: str, split: str, image_dir: Path, masks_dir: Path) -> dict[str, Any]:
    """One manifest row; every problem found is kept in `problems` with the file it concerns."""
    row: dict[str, Any] = {
        # size fields stay empty (null) for an unreadable image: its one failure is "unreadable"
        "id": image_id, "split": split, "image_path": "", "height": None, "width": None, "channels": None,
        "dtype": None, "colour": None, "masks_dir_present": masks_dir.is_dir(), "missing_masks": False,
        "n_masks": 0, "mask_coverage": 0.0, "wrong_size_masks": 0, "empty_masks": 0,
        "overlap_pixels": 0, "overlap_fraction": 0.0, "overlap_width": 0, "unreadable_files": 0,
        "problems": "",
    }
    problems: list[str] = []
    image_files = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in io.IMAGE_SUFFIXES) \
        if image_dir.is_dir() else []
    image = None
    if not image_files:
        row["unreadable_files"] += 1
        problems.append(f"{image_dir}: no image file")
    else:
        row["image_path"] = str(image_files[0])
        try:
            image = io.read_image(image_files[0])
        except io.ImageError as err:
            row["unreadable_files"] += 1
            problems.append(str(err))
    if image is not None:
        row.update(height=image.shape[0], width=image.shape[1],
                   channels=1 if image.ndim == 2 else image.shape[2], dtype=str(image.dtype),
                   colour="grey" if io.is_grey(image) else "colour")

    if split == "train":
        if not row["masks_dir_present"]:
            problems.append(f"{masks_dir}: masks folder missing")
        else:
            coverage = None if image is None else np.zeros(image.shape[:2], np.uint16)
            for mask_path in sorted(masks_dir.glob("*.png")):
                try:
                    mask = io.read_mask(mask_path)
                except io.ImageError as err:
                    row["unreadable_files"] += 1
                    problems.append(str(err))
                    continue
                row["n_masks"] += 1
                if not mask.any():
                    row["empty_masks"] += 1
                    problems.append(f"{mask_path}: mask is all zero")
                if coverage is not None:
                    if mask.shape != coverage.shape:
                        row["wrong_size_masks"] += 1
                        problems.append(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                                        f"image is {coverage.shape[1]}x{coverage.shape[0]}")
                    else:
                        coverage += mask
            if coverage is not None:
                row["mask_coverage"] = float((coverage > 0).mean())
                if (coverage > 1).any():
                    row.update(overlap_stats(coverage > 1, coverage > 0))
                    problems.append(f"{masks_dir}: masks overlap on {row['overlap_pixels']} pixels "
                                    f"({row['overlap_fraction']:.3%} of the nuclei's pixels), at most "
                                    f"{row['overlap_width']} px wide")
        row["missing_masks"] = row["n_masks"] == 0
    row["problems"] = "; ".join(problems)
    return row


def overlap_width(overlap: np.ndarray) -> int:
    """Side of the largest square that fits inside the overlapping pixels: 1 or 2 where masks
    merely graze each other, the nucleus' size for a duplicated or shifted mask."""
    from scipy.ndimage import binary_erosion

    width = 0
    while overlap.any():
        width += 1
        overlap = binary_erosion(overlap, np.ones((2, 2), bool), border_value=0)
    return width


def overlap_stats(overlap: np.ndarray, foreground: np.ndarray) -> dict[str, Any]:
    """Pixels claimed by two masks: how many, their share of all nucleus pixels, how wide."""
    return {"overlap_pixels": int(overlap.sum()), "overlap_fraction": float(overlap.sum() / foreground.sum()),
            "overlap_width": overlap_width(overlap)}


def build_manifest(train_dir: str | Path, test_dir: str | Path | None = None, limit: int = 0) -> pd.DataFrame:
    """Rows for every training and test image (first `limit` of each split when limit > 0)."""
    jobs = []
    for split, folder in (("train", train_dir), ("test", test_dir)):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: data folder not found (did you run `dvc pull`?)")
        samples = list(io.iter_dsb(folder))
        jobs += [(split, s) for s in (samples[:limit] if limit > 0 else samples)]
    rows = [describe_sample(image_id, split, image_dir, masks_dir)
            for split, (image_id, image_dir, masks_dir) in tqdm(jobs, desc="validate: reading images and masks",
                                                                 unit="image")]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


# ---- the expectation suite, as code ----
