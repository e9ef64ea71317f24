"""From the model's foreground and border probability maps to an instance label image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed


# The defaults of every recipe (`segment.Recipe` takes them from here; params.yaml repeats them, a test checks).
DEFAULTS = {"fg_threshold": 0.5, "marker_threshold": 0.7, "border_threshold": 0.3, "min_marker_area": 4,
            "min_object_area": 12, "fill_holes": True}


def labels_from_maps(
    foreground: np.ndarray,
    border: np.ndarray,
    *,
    fg_threshold: float = DEFAULTS["fg_threshold"],
    marker_threshold: float = DEFAULTS["marker_threshold"],
    border_threshold: float = DEFAULTS["border_threshold"],
    min_marker_area: int = DEFAULTS["min_marker_area"],
    min_object_area: int = DEFAULTS["min_object_area"],
    fill_holes: bool = DEFAULTS["fill_holes"],
) -> np.ndarray:
    """uint16 instance labels 1..N (0 = background) from sigmoid foreground/border maps.

    Confident interiors away from any border seed a watershed over the foreground mask, so
    nuclei that touch are split along the border channel. A mask component that holds no
    seed still becomes one nucleus rather than being dropped.
    """
    foreground = np.asarray(foreground, np.float32)
    border = np.asarray(border, np.float32)
    if foreground.shape != border.shape or foreground.ndim != 2:
        raise ValueError(
            f"expected two 2-D maps of one shape, got {foreground.shape} and {border.shape}"
        )
    mask = foreground > fg_threshold
    seeds = mask & (foreground > marker_threshold) & (border < border_threshold)
    markers = _drop_small(ndi.label(seeds)[0], min_marker_area)
    # A marker pixel whose 4 neighbours are all marker pixels floods nothing, so leaving such
    # pixels out of the priority queue yields the same watershed several times faster.
    inner = ndi.binary_erosion(markers > 0, border_value=1)
    labels = watershed(border - foreground, np.where(inner, 0, markers), mask=mask & ~inner)
    labels = np.where(inner, markers, labels)
    orphans = ndi.label(mask & (labels == 0))[0]
    labels = np.where(orphans > 0, orphans + labels.max(initial=0), labels)
    if fill_holes:
        labels = fill_label_holes(labels)
    labels = relabel_sequential(_drop_small(labels, min_object_area))[0]
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{labels.max()} objects do not fit in uint16 labels")
    return labels.astype(np.uint16)


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside each instance with its own label.

    Only background is filled, so an instance lying inside another's hole survives.
    """
    filled = labels.copy()
    if not (ndi.binary_fill_holes(labels > 0) & (labels == 0)).any():
        return filled  # no instance can have a hole the union of instances lacks
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box]
        filled[box][ndi.binary_fill_holes(crop == label) & (crop == 0)] = label
    return filled


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Zero out labels covering fewer than `min_area` pixels.

    skimage's remove_small_objects warns on label images holding a single object, which is
    routine here, hence the bincount.
    """
    small = np.bincount(labels.ravel()) < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)
