"""Stage `prepare`: instance labels, training targets and normalised images.

Touching nuclei merge in a plain foreground mask, so next to the foreground the model learns a
`border` target: a thin inner ring of every nucleus, widest where two nuclei meet. Seeds taken
inside the rings are then grown back by watershed (see `postprocess`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries
from tqdm import tqdm

from nucseg import io
from nucseg.config import get_logger

log = get_logger("nucseg.prepare")


def labels_from_masks(masks: list[np.ndarray]) -> np.ndarray:
    """uint16 instance labels, 1..N in the given order.

    A pixel claimed by several masks (data v2 has a few 1-2 px overlaps, tolerated by
    `validate`) goes to the smallest of them, the earlier one on a tie: a pixel matters more
    to a small nucleus, and the result does not depend on anything but the masks.
    """
    if not masks:
        raise ValueError("no masks to combine")
    labels = np.zeros(masks[0].shape, np.uint16)
    areas = [int(mask.sum()) for mask in masks]
    for index in sorted(range(len(masks)), key=lambda k: (-areas[k], -k)):  # smallest, then earliest, paints last
        labels[masks[index]] = index + 1
    return labels


def targets_from_labels(labels: np.ndarray, border_width: int = 2) -> np.ndarray:
    """uint8 HxWx2: foreground, and an inner border ring `border_width` pixels wide."""
    foreground = labels > 0
    border = find_boundaries(labels, mode="inner")
    if border_width > 1:
        border = dilation(border, disk(border_width - 1))
    return np.stack([foreground, border & foreground], axis=-1).astype(np.uint8)


def resize_sample(image: np.ndarray, labels: np.ndarray, longest_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescale so the longer side is `longest_side`; labels by nearest neighbour."""
    height, width = labels.shape
    factor = longest_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR),
            cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))


def prepare_sample(image_path: Path, masks_dir: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    image = io.normalize_image(io.read_image(image_path), cfg["normalize_low"], cfg["normalize_high"])
    image = np.round(image * 255).astype(np.uint8)
    labels = labels_from_masks([io.read_mask(p) for p in sorted(masks_dir.glob("*.png"))])
    if cfg.get("resize"):
        image, labels = resize_sample(image, labels, int(cfg["resize"]))
    return {"image": image, "labels": labels, "target": targets_from_labels(labels, int(cfg["border_width"]))}


def run(params: dict[str, Any], manifest_path: str | Path = "artifacts/manifest.csv",
        samples_dir: str | Path = "artifacts/prepared",
        summary_path: str | Path = "reports/prepare_summary.json") -> dict[str, Any]:
    cfg = params["prepare"]
    manifest = pd.read_csv(manifest_path)
    train = manifest[manifest["split"] == "train"]
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in tqdm(train.itertuples(), total=len(train), desc="prepare: labels and targets", unit="image"):
        image_path = Path(row.image_path)
        sample = prepare_sample(image_path, image_path.parent.parent / "masks", cfg)
        io.write_npz(samples_dir / f"{row.id}.npz", **sample)
        rows.append({"id": row.id, "height": sample["labels"].shape[0],
                     "width": sample["labels"].shape[1], "n_nuclei": int(sample["labels"].max()),
                     "border_fraction": round(float(sample["target"][..., 1].mean()), 5)})
    table = pd.DataFrame(rows)
    summary = {"images": int(len(table)), "nuclei": int(table["n_nuclei"].sum()),
               "mean_border_fraction": round(float(table["border_fraction"].mean()), 5)}
    io.write_json(summary_path, summary)
    log.info("prepared %d images: %s", len(table), summary)
    return summary
