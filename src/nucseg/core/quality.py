"""Quality levels: what a user may trade at scoring time without registering a new model.

A model's recipe is how it was evaluated and promoted (`default`). The test-time views are the
one setting whose change costs no retraining and no new thresholds: each view is one more full
network pass, so `fast` (one view) runs the network about four times less than `flips` and
`best` (the eight turns and mirrors) about twice as much. Scale handling is never traded: it is
what keeps a new microscope's images segmentable. Each level's measured DSB and speed travel
with the registered version (`promote`), so a user sees what the trade costs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import pandas as pd
from tqdm import tqdm

from nucseg.core import metrics
from nucseg.core.segment import Recipe, segment_prepared

# level -> test-time views (`segment.TTA_VIEWS`); None keeps the recipe's own.
QUALITY_LEVELS = {"fast": "none", "default": None, "best": "dihedral"}
DEFAULT_QUALITY = "default"


def check_quality(level: str) -> str:
    """`level`, or a ValueError naming the levels there are."""
    if level not in QUALITY_LEVELS:
        raise ValueError(f"unknown quality level {level!r}: choose one of {', '.join(QUALITY_LEVELS)}")
    return level


def at_quality(recipe: Recipe, level: str) -> Recipe:
    """The recipe a segmenter runs at `level`."""
    views = QUALITY_LEVELS[check_quality(level)]
    return recipe if views is None else dataclasses.replace(recipe, tta=views)


def measure_levels(network, samples: list[dict[str, Any]], recipe: Recipe,
                   levels: Sequence[str] = tuple(QUALITY_LEVELS)) -> dict[str, dict[str, float]]:
    """{level: DSB, per-modality DSB and segmentation speed (megapixels of image per second, the
    network and post-processing in this process)} on prepared `samples`: what a user trades.
    Only segmenting is timed, not scoring the labels."""
    megapixels = sum(s["labels"].size for s in samples) / 1e6
    measured = {}
    for level in levels:
        at_level, predictions = at_quality(recipe, level), []
        start = time.perf_counter()
        for sample in tqdm(samples, desc=f"quality {level}: segmenting images", unit="image"):
            predictions.append(segment_prepared(network, sample["image"], at_level, *sample["labels"].shape)[0])
        seconds = time.perf_counter() - start
        scores = pd.DataFrame({"modality": [s["modality"] for s in samples],
                               "dsb": [float(metrics.dsb_scores_per_threshold(s["labels"], p).mean())
                                       for s, p in zip(samples, predictions)]})
        measured[level] = {"dsb": round(float(scores["dsb"].mean()), 4),
                           **{f"dsb_{m}": round(float(part["dsb"].mean()), 4) for m, part in scores.groupby("modality")},
                           "megapixels_per_second": round(megapixels / seconds, 3)}
    return measured
