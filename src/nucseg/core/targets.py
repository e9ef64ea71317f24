"""Instance labels and training targets from per-nucleus masks.

Touching nuclei merge in a plain foreground mask, so next to the foreground the model learns a
*separator* channel: either the touching gap — pixels near two or more different nuclei, as
in the DSB2018 winners' targets — or a thin inner border ring of every nucleus
(`prepare.separator`). Seeds taken away from the separator are then grown back by watershed (see
`postprocess`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

SEPARATORS = ("gap", "border")


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


def gap_radius(area: int, radius_fraction: float, min_radius: int) -> int:
    """How far a nucleus reaches out when looking for neighbours: a fixed share of its
    equivalent radius, so big nuclei get wide gaps and small ones are not swallowed by them."""
    return max(min_radius, int(round(radius_fraction * np.sqrt(area / np.pi))))


def touching_gaps(labels: np.ndarray, radius_fraction: float = 0.3, min_radius: int = 1) -> np.ndarray:
    """bool HxW: pixels within reach (`gap_radius`) of two or more different nuclei — where
    nuclei touch or nearly touch, background included; never around an isolated nucleus."""
    reached = np.zeros(labels.shape, np.uint8)
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        own = labels[box] == label
        radius = gap_radius(int(own.sum()), radius_fraction, min_radius)
        grown = tuple(slice(max(s.start - radius, 0), min(s.stop + radius, n)) for s, n in zip(box, labels.shape))
        window = labels[grown] == label
        reached[grown] += ndi.binary_dilation(window, structure=disk(radius)).astype(np.uint8)
        np.minimum(reached, 2, out=reached)  # only "two or more" matters; uint8 cannot overflow
    return reached >= 2


def targets_from_labels(labels: np.ndarray, separator: str = "gap", border_width: int = 2,
                        gap_radius_fraction: float = 0.3) -> np.ndarray:
    """uint8 HxWx2: foreground, and the separator channel (`gap` or an inner `border` ring
    `border_width` pixels wide)."""
    foreground = labels > 0
    if separator == "gap":
        second = touching_gaps(labels, gap_radius_fraction)
    elif separator == "border":
        second = find_boundaries(labels, mode="inner")
        if border_width > 1:
            second = dilation(second, disk(border_width - 1))
        second &= foreground
    else:
        raise ValueError(f"separator must be one of {SEPARATORS}, got {separator!r}")
    return np.stack([foreground, second], axis=-1).astype(np.uint8)
