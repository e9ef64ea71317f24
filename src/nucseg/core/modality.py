"""Imaging modality from colour and intensity: features, k-means and cluster names.

DSB2018 mixes fluorescence (bright nuclei on black), brightfield (dark nuclei on a light grey
background) and H&E histology (purple nuclei on pink tissue). Clusters are named from their
centroids, not their index, so the names survive a reseed; the fitted model is kept as JSON so
scoring can assign a modality to new images.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import cv2
import numpy as np

from nucseg import io


# Background level separates dark-field fluorescence from light-field images; log-saturation
# separates stained (H&E) from grey brightfield, whose saturation is exactly zero. The defaults
# of the thresholds that name the clusters (params.yaml's `modality` repeats them, a test checks).
FEATURES = ["median", "log_saturation"]
FLUORESCENCE_MAX_MEDIAN = 0.35
HISTOLOGY_MIN_SATURATION = 0.05


def log_saturation(saturation: float) -> float:
    return float(np.log(saturation + 0.01))


def image_features(image: np.ndarray) -> np.ndarray:
    """Background level and colourfulness, on the stored intensity scale."""
    scale = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else max(float(image.max()), 1.0)
    rgb = io.to_rgb(image).astype(np.float32) / scale
    grey = rgb.mean(axis=2)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return np.array([np.median(grey), log_saturation(hsv[..., 1].mean())], np.float32)


def name_clusters(centroids: np.ndarray, fluorescence_max_median: float = FLUORESCENCE_MAX_MEDIAN,
                  histology_min_saturation: float = HISTOLOGY_MIN_SATURATION) -> list[str]:
    """Modality of each centroid (feature units): a dark background means fluorescence; of the
    light-background clusters the most colourful is histology (H&E stain), the rest brightfield."""
    columns = {name: centroids[:, j] for j, name in enumerate(FEATURES)}
    names = np.where(columns["median"] <= fluorescence_max_median, "fluorescence", "brightfield").astype(object)
    light = np.flatnonzero(names == "brightfield")
    if len(light):
        most_colourful = light[np.argmax(columns["log_saturation"][light])]
        if columns["log_saturation"][most_colourful] >= log_saturation(histology_min_saturation):
            names[most_colourful] = "histology"
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def fit(features: np.ndarray, n_clusters: int, seed: int, fluorescence_max_median: float = FLUORESCENCE_MAX_MEDIAN,
        histology_min_saturation: float = HISTOLOGY_MIN_SATURATION) -> dict[str, Any]:
    """K-means on standardised features; returns a JSON-able model with named clusters."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    n_clusters = min(n_clusters, len(features))
    scaler = StandardScaler().fit(features)
    kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(scaler.transform(features))
    centroids = scaler.inverse_transform(kmeans.cluster_centers_)
    names = name_clusters(centroids, fluorescence_max_median, histology_min_saturation)
    return {"features": FEATURES, "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "centroids": kmeans.cluster_centers_.tolist(), "centroids_in_feature_units": centroids.tolist(),
            "names": names}


def predict(model: dict[str, Any], features: np.ndarray) -> list[str]:
    """Name of the nearest centroid for each feature row."""
    scaled = (np.atleast_2d(features) - np.array(model["mean"])) / np.array(model["scale"])
    distances = ((scaled[:, None, :] - np.array(model["centroids"])[None]) ** 2).sum(axis=2)
    return [model["names"][i] for i in distances.argmin(axis=1)]


def example_grid(groups: dict[str, list[np.ndarray]], thumb: int) -> np.ndarray:
    """One row of thumbnails per modality, its name written on the first tile."""
    columns = max(len(images) for images in groups.values())
    grid = np.full((len(groups) * thumb, columns * thumb, 3), 255, np.uint8)
    for row, (name, images) in enumerate(groups.items()):
        for col, image in enumerate(images):
            tile = (io.normalize_image(image) * 255).astype(np.uint8)
            grid[row * thumb:(row + 1) * thumb, col * thumb:(col + 1) * thumb] = cv2.resize(
                tile, (thumb, thumb), interpolation=cv2.INTER_AREA)
        cv2.putText(grid, name, (3, row * thumb + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return grid
