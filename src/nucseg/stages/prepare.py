"""Stage `prepare`: instance labels, training targets and normalised images of every training
image, one npz each (see `core.targets` for the foreground and separator targets).

`image` and `target` are at the network's working size (`prepare.resize`); `labels`, the
truth that evaluation scores against, stay at the size they were annotated at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.preprocess import preprocess, preprocessing, resize_labels
from nucseg.core.targets import labels_from_masks, targets_from_labels

log = get_logger("nucseg.prepare")


def prepare_sample(image_path: Path, masks_dir: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    image = preprocess(io.read_image(image_path), **preprocessing(cfg))
    labels = labels_from_masks([io.read_mask(p) for p in sorted(masks_dir.glob("*.png"))])
    working = resize_labels(labels, *image.shape[:2])
    target = targets_from_labels(working, cfg["separator"], int(cfg["border_width"]), float(cfg["gap_radius_fraction"]))
    return {"image": image, "labels": labels, "target": target}


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
                     "separator_fraction": round(float(sample["target"][..., 1].mean()), 5)})
    table = pd.DataFrame(rows)
    summary = {"images": int(len(table)), "nuclei": int(table["n_nuclei"].sum()),
               "mean_separator_fraction": round(float(table["separator_fraction"].mean()), 5)}
    io.write_json(summary_path, summary)
    log.info("prepared %d images: %s", len(table), summary)
    return summary
