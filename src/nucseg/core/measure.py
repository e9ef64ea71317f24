"""Per-nucleus measurements and outlines: what a biologist takes from a segmentation to the
next step (counting, morphology, intensity), and outlines QuPath can open."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from skimage.measure import find_contours, regionprops_table

COLUMNS = ["label", "centroid_row", "centroid_col", "area", "perimeter", "eccentricity", "solidity",
           "mean_intensity", "integrated_intensity"]


def intensity_of(image: np.ndarray) -> np.ndarray:
    """float64 HxW on the image's own scale: grey as stored, colour as the mean of R, G, B."""
    return (image[..., :3].mean(axis=-1) if image.ndim == 3 else image).astype(np.float64)


def measure(labels: np.ndarray, image: np.ndarray) -> pd.DataFrame:
    """One row per nucleus of `labels` (uint instance labels) with its shape and intensity in
    `image` (the image as read, same height and width)."""
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels are {labels.shape}, the image {image.shape[:2]}: they must have one size")
    table = regionprops_table(labels.astype(np.int32), intensity_of(image),
                              properties=("label", "centroid", "area", "perimeter", "eccentricity", "solidity",
                                          "intensity_mean"))
    frame = pd.DataFrame(table).rename(columns={"centroid-0": "centroid_row", "centroid-1": "centroid_col",
                                                "intensity_mean": "mean_intensity"})
    frame["integrated_intensity"] = frame["mean_intensity"] * frame["area"]
    return frame.reindex(columns=COLUMNS).astype({"label": int, "area": int})


def outlines_geojson(labels: np.ndarray) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of one polygon per nucleus (x = column, y = row, pixel
    corners), as QuPath imports detections."""
    features = []
    for label in np.unique(labels[labels > 0]):
        mask = np.pad(labels == label, 1)
        contour = max(find_contours(mask.astype(np.uint8), 0.5), key=len) - 1  # undo the pad
        ring = [[round(float(x) + 0.5, 2), round(float(y) + 0.5, 2)] for y, x in contour]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        features.append({"type": "Feature", "id": int(label),
                         "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "detection", "label": int(label),
                                        "classification": {"name": "Nucleus"}}})
    return {"type": "FeatureCollection", "features": features}
