"""Nucleus size: how big an image's nuclei are, and how much to rescale the image so the network
sees them at about the size it learnt them at (Cellpose's `diameter`, estimated or given).

A network trained on ~20 px nuclei cuts 100 px nuclei into pieces, so the instances it makes at
the wrong scale measure their fragments, not the nuclei. Two measures fail differently there:
- the *foreground* diameter: twice the largest inscribed radius of each foreground region (a
  clump of touching nuclei still has about one nucleus's inscribed radius), area-weighted median;
- the *instance* diameter: median equivalent-circle diameter of the segmented instances.
At a scale the network handles they agree; where it fragments nuclei they part. So the image may
be passed at coarser scales too (a quarter and a sixteenth of the pixels), and the estimate is
taken at the scale where the two measures agree best, nudged towards the training size the
network is surest at (measured on shifted `test` copies: `benchmarks/scale.py`).

A pass whose measures agree on a size the network handles as it is settles the question, and the
passes stop there. Small images start at full size, which then serves as a view of the
segmentation (no extra cost); large ones start coarse, where big nuclei show up for a fraction
of a full-size pass.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage as ndi

# Scales of the estimating passes, relative to the image.
PYRAMID = (1.0, 0.5, 0.25)
# Foreground regions smaller than this many pixels are noise, not nuclei.
MIN_REGION_AREA = 9
# Weight of "close to the training size" against "the two measures agree" when picking a pass.
TRAINING_SIZE_WEIGHT = 0.5
# A pass settles the size when its two measures are within this ratio of each other.
AGREEMENT = 1.25


class SizeEstimate(NamedTuple):
    """An image's nucleus diameter in its own pixels, and the scale the network sees it at."""

    diameter: float  # 0: no nuclei found
    factor: float  # image side multiplier applied before the network (1: as it is)
    given: bool = False  # the user said the diameter; nothing was estimated


def instance_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter, in pixels, of the labelled objects (0 when there are none)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2.0 * np.sqrt(areas / np.pi))) if areas.size else 0.0


def foreground_diameter(foreground: np.ndarray) -> float:
    """Area-weighted median over foreground regions (holes filled) of twice the largest
    inscribed radius; 0 when there is no region of `MIN_REGION_AREA` pixels."""
    filled = ndi.binary_fill_holes(foreground)
    regions, count = ndi.label(filled)
    if count == 0:
        return 0.0
    index = np.arange(1, count + 1)
    areas = ndi.sum_labels(filled, regions, index)
    radii = ndi.maximum(ndi.distance_transform_edt(filled), regions, index)
    keep = areas >= MIN_REGION_AREA
    if not keep.any():
        return 0.0
    diameters, weights = 2.0 * np.asarray(radii)[keep], areas[keep]
    order = np.argsort(diameters)
    cumulative = np.cumsum(weights[order])
    return float(diameters[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def pick_diameter(measured: dict[float, tuple[float, float]], training_diameter: float) -> float:
    """The image's nucleus diameter from (foreground, instance) diameters measured at each pass
    scale: at the scale where they agree best and lie closest to `training_diameter`, their
    geometric mean brought back to the image's pixels. 0 when no pass found nuclei."""
    best = None
    for factor, (foreground, instances) in measured.items():
        if foreground <= 0 or instances <= 0:
            continue
        size = math.sqrt(foreground * instances)
        cost = abs(math.log(foreground / instances)) + TRAINING_SIZE_WEIGHT * abs(math.log(size / training_diameter))
        if best is None or cost < best[0]:
            best = (cost, size / factor)
    return best[1] if best else 0.0


def rescale_factor(diameter: float, training_diameter: float, band: tuple[float, float],
                   limits: tuple[float, float]) -> float:
    """Image side multiplier: 1 for nuclei within `band` (× the training diameter, where the
    network does well as they are), else the one that brings them to the training diameter,
    clipped to `limits`. 0 (nothing found) leaves the image as it is."""
    if diameter <= 0 or band[0] * training_diameter <= diameter <= band[1] * training_diameter:
        return 1.0
    return float(np.clip(training_diameter / diameter, *limits))


def estimate_size(maps_at: Callable[[float], np.ndarray], diameter_of: Callable[[np.ndarray], tuple[float, float]],
                  training_diameter: float, handled: Callable[[float], bool], coarse_first: bool = False) -> float:
    """Nucleus diameter from the network's maps at the `PYRAMID` scales (`coarse_first`, or full
    size first); `maps_at(factor)` makes (and may keep) them, `diameter_of(maps)` measures
    (foreground, instance) diameters. A pass whose measures agree on a size the network handles
    as it is (`handled`, in the pass's pixels) ends the search."""
    measured = {}
    for factor in sorted(PYRAMID, reverse=not coarse_first):
        measured[factor] = diameter_of(maps_at(factor))
        foreground, instances = measured[factor]
        if foreground > 0 and instances > 0 and 1 / AGREEMENT <= foreground / instances <= AGREEMENT \
                and handled(math.sqrt(foreground * instances)):
            break
    return pick_diameter(measured, training_diameter)
