"""Stage `prepare`: instance labels, training targets, normalised images and the split.

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
    """uint16 instance labels, 1..N in the given order (masks of one image do not overlap)."""
    if not masks:
        raise ValueError("no masks to combine")
    labels = np.zeros(masks[0].shape, np.uint16)
    for index, mask in enumerate(masks, start=1):
        labels[mask] = index
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


def split_ids(table: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """train/val per id, stratified by modality where every modality has at least two images."""
    from sklearn.model_selection import train_test_split

    counts = table["modality"].value_counts()
    stratify = table["modality"] if (counts >= 2).all() and len(counts) > 1 else None
    n_val = max(1, round(len(table) * val_fraction))
    if stratify is not None and n_val < len(counts):
        stratify = None
    _, val_ids = train_test_split(table["id"], test_size=n_val, random_state=seed, stratify=stratify)
    return table["id"].isin(set(val_ids)).map({True: "val", False: "train"})


def run(params: dict[str, Any], manifest_path: str | Path = "artifacts/manifest.csv",
        modality_path: str | Path = "artifacts/modality.csv", samples_dir: str | Path = "artifacts/prepared",
        split_path: str | Path = "artifacts/split.csv",
        summary_path: str | Path = "reports/prepare_summary.json") -> dict[str, Any]:
    cfg = params["prepare"]
    manifest = pd.read_csv(manifest_path)
    modality = pd.read_csv(modality_path)[["id", "modality"]]
    train = manifest[manifest["split"] == "train"].merge(modality, on="id")
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in tqdm(train.itertuples(), total=len(train), desc="prepare: labels and targets", unit="image"):
        image_path = Path(row.image_path)
        sample = prepare_sample(image_path, image_path.parent.parent / "masks", cfg)
        io.write_npz(samples_dir / f"{row.id}.npz", **sample)
        rows.append({"id": row.id, "modality": row.modality, "height": sample["labels"].shape[0],
                     "width": sample["labels"].shape[1], "n_nuclei": int(sample["labels"].max()),
                     "border_fraction": round(float(sample["target"][..., 1].mean()), 5)})
    table = pd.DataFrame(rows)
    table.insert(1, "split", split_ids(table, float(cfg["val_fraction"]), int(cfg["seed"])))
    io.write_csv(split_path, table)
    summary = {
        "images": {s: int(n) for s, n in table["split"].value_counts().items()},
        "nuclei": int(table["n_nuclei"].sum()),
        "modality_by_split": {s: {m: int(n) for m, n in part["modality"].value_counts().sort_index().items()}
                              for s, part in table.groupby("split")},
    }
    io.write_json(summary_path, summary)
    log.info("prepared %d images: %s", len(table), summary)
    return summary
