"""What the network sees: one function for training data (`prepare`) and for every image
segmented later, so a model is never fed images prepared differently from those it learnt on."""

from __future__ import annotations

import cv2
import numpy as np

from nucseg import io


def working_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) after rescaling so the longer side is `resize` (0 keeps the size)."""
    if not resize:
        return height, width
    factor = resize / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def preprocess(image: np.ndarray, normalize_low: float, normalize_high: float, resize: int = 0) -> np.ndarray:
    """uint8 HxWx3: percentile-normalised (8/16-bit, grey/RGB/RGBA alike), stored as 8-bit
    levels, rescaled to `working_size`."""
    normalised = np.round(io.normalize_image(image, normalize_low, normalize_high) * 255).astype(np.uint8)
    height, width = working_size(*normalised.shape[:2], resize)
    if (height, width) == normalised.shape[:2]:
        return normalised
    shrinking = height < normalised.shape[0]
    return cv2.resize(normalised, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Instance labels at another size, by nearest neighbour (labels are ids, not intensities)."""
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
