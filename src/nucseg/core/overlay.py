"""Outline overlays a person can check at a glance."""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import find_boundaries


def draw_outlines(image: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """Copy of a uint8 RGB image with each instance's inner outline painted in `colour`."""
    panel = image.copy()
    panel[find_boundaries(labels, mode="inner")] = colour
    return panel


def captioned(image: np.ndarray, caption: str) -> np.ndarray:
    """`image` with `caption` written in its top-left corner (white on a black band), keeping
    its size so the overlay still lies pixel for pixel on the image."""
    panel = np.ascontiguousarray(image).copy()
    (width, height), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    panel[: height + baseline + 4, : width + 6] = 0
    cv2.putText(panel, caption, (3, height + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def overlay_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """image | truth contours (green) | predicted contours (yellow), side by side, at the size of
    the labels (a resized working image is scaled back)."""
    if image.shape[:2] != truth.shape:
        image = cv2.resize(image, truth.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return np.concatenate([image, draw_outlines(image, truth, (0, 255, 0)), draw_outlines(image, pred)], axis=1)
