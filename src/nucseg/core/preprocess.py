"""What the network sees: one function for training data (`prepare`) and for every image
segmented later, so a model is never fed images prepared differently from those it learnt on.

`input_form="grey"` makes the modalities look alike: luminance, inverted when the background is
brighter than the nuclei (brightfield, H&E), so stained tissue and fluorescence reach the network
as bright nuclei on a dark background. Local contrast equalisation (CLAHE, `clahe_clip`) is
available but off by default: it measured worse in every modality.
"""

from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np

from nucseg import io

INPUT_FORMS = ("rgb", "grey")
# The settings of `preprocess`, named as in params.yaml's `prepare` and in a model's recipe.
PREPROCESSING = ("normalize_low", "normalize_high", "resize", "input_form", "clahe_clip", "clahe_grid")


def working_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) after rescaling so the longer side is `resize` (0 keeps the size)."""
    if not resize:
        return height, width
    factor = resize / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def bright_background(grey: np.ndarray) -> bool:
    """Nuclei cover a minority of almost every field, so the median is background."""
    return float(np.median(grey)) > 0.5


def nuclei_bright_grey(rgb: np.ndarray, clahe_clip: float, clahe_grid: int = 8) -> np.ndarray:
    """uint8 HxWx3 (three equal channels) of a [0, 1] RGB image: luminance, inverted on a bright
    background, CLAHE with `clahe_clip` (0: none) over a `clahe_grid` x `clahe_grid` grid of tiles."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2GRAY)
    if bright_background(grey):
        grey = 1.0 - grey
    levels = np.round(grey * 255).astype(np.uint8)
    if clahe_clip > 0:
        levels = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(clahe_grid, clahe_grid)).apply(levels)
    return np.repeat(levels[..., None], 3, axis=2)


def preprocess(image: np.ndarray, normalize_low: float, normalize_high: float, resize: int = 0,
               input_form: str = "rgb", clahe_clip: float = 0.0, clahe_grid: int = 8) -> np.ndarray:
    """uint8 HxWx3: percentile-normalised (8/16-bit, grey/RGB/RGBA alike), in the `input_form`,
    stored as 8-bit levels, rescaled to `working_size`."""
    rgb = io.normalize_image(image, normalize_low, normalize_high)
    if input_form == "grey":
        normalised = nuclei_bright_grey(rgb, clahe_clip, clahe_grid)
    elif input_form == "rgb":
        normalised = np.round(rgb * 255).astype(np.uint8)
    else:
        raise ValueError(f"input_form must be one of {INPUT_FORMS}, got {input_form!r}")
    height, width = working_size(*normalised.shape[:2], resize)
    if (height, width) == normalised.shape[:2]:
        return normalised
    shrinking = height < normalised.shape[0]
    return cv2.resize(normalised, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def preprocessing(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `preprocess` settings among a recipe's or params' `prepare` ones: models whose
    preprocessing differs see different images, so they cannot be scored on the same samples."""
    return {name: settings[name] for name in PREPROCESSING}


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Instance labels at another size, by nearest neighbour (labels are ids, not intensities)."""
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
