"""Shifted copies of evaluation images: what another microscope does to them.

A new instrument brings another magnification (nuclei several times larger or smaller) and
other intensities (dim, saturated, noisy). Each copy is made from a prepared image and its true
labels: rescaled copies resize both (labels by nearest neighbour); photometric copies change the
image's levels and go through the recipe's `preprocess` again, as a user's image would.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from nucseg.core.preprocess import preprocess, preprocessing, resize_labels

SCALES = {"x0.25": 0.25, "x0.5": 0.5, "x2": 2.0, "x3": 3.0, "x4": 4.0}
DARKER = 0.2  # intensities times this: a fifth of the 8-bit levels left
BRIGHTER = 3.0  # intensities times this, clipped: nuclei saturate
NOISE_SIGMA = 0.05  # Gaussian noise, as a share of the 8-bit range
NOISE_SEED = 0


def rescaled(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Both resized by `factor`: the image area-averaged when shrinking, bicubic when enlarging
    (a sharper stand-in for a higher magnification than linear interpolation's blur)."""
    height, width = labels.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=interpolation), resize_labels(labels, size[1], size[0])


def _levels(image: np.ndarray, change: Callable[[np.ndarray], np.ndarray], settings: dict) -> np.ndarray:
    changed = np.clip(np.round(change(image.astype(np.float32))), 0, 255).astype(np.uint8)
    return preprocess(changed, **settings)


def shifted_copy(shift: str, image: np.ndarray, labels: np.ndarray,
                 recipe_settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """(prepared image, labels) of the `shift` copy of one prepared image and its labels (at the
    image's size); `recipe_settings`: the recipe's, whose `preprocess` made the image."""
    if shift in SCALES:
        return rescaled(image, labels, SCALES[shift])
    settings = preprocessing(recipe_settings)
    if shift == "darker":
        return _levels(image, lambda x: x * DARKER, settings), labels
    if shift == "brighter":
        return _levels(image, lambda x: x * BRIGHTER, settings), labels
    if shift == "noisier":
        noise = np.random.default_rng(NOISE_SEED).normal(0.0, NOISE_SIGMA * 255, image.shape[:2])[..., None]
        return _levels(image, lambda x: x + noise, settings), labels
    raise ValueError(f"unknown shift {shift!r}; known: {SHIFTS}")


SHIFTS = (*SCALES, "darker", "brighter", "noisier")
