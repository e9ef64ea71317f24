"""Segment an image: the recipe, then normalise → network (tiled, test-time views averaged, small
nuclei enlarged) → instances.

Every consumer — `evaluate`, `promote`, `score`, `predict`, the served model, the benchmarks —
segments through `segment`, with the `Recipe` stored beside the network, so a model is always
scored the way it was evaluated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from nucseg.core.infer import predict_maps
from nucseg.core.postprocess import labels_from_maps
from nucseg.core.preprocess import INPUT_FORMS, preprocess, preprocessing, resize_labels

# Pads every image to a multiple of 32: enough for U-Nets up to depth 5 and the MobileNetV2
# encoder, so a model loaded from the registry needs no knowledge of how it was built.
INFERENCE_MULTIPLE = 32

# Test-time augmentation: the views (quarter turns, mirrored) whose maps are averaged.
# `flips` = identity, vertical, horizontal and both flips (= a half turn).
TTA_VIEWS = {
    "none": ((0, False),),
    "flips": ((0, False), (2, True), (0, True), (2, False)),
    "dihedral": tuple((turns, mirror) for turns in range(4) for mirror in (False, True)),
}


@dataclass(frozen=True)
class Recipe:
    """Everything besides the weights that decides a segmentation; stored with every model."""

    normalize_low: float = 1.0
    normalize_high: float = 99.8
    resize: int = 0
    input_form: str = "rgb"
    clahe_clip: float = 0.0
    tile_size: int = 512
    tile_overlap: int = 64
    max_untiled_pixels: int = 1_048_576
    tta: str = "none"
    upscale_below: float = 0.0
    upscale_to: float = 20.0
    max_upscale: float = 2.0
    fg_threshold: float = 0.5
    marker_threshold: float = 0.7
    border_threshold: float = 0.3
    min_marker_area: int = 4
    min_object_area: int = 12
    fill_holes: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.normalize_low < self.normalize_high <= 100.0:
            problems.append(f"need 0 <= normalize_low < normalize_high <= 100, got {self.normalize_low}, "
                            f"{self.normalize_high}")
        if self.tta not in TTA_VIEWS:
            problems.append(f"tta must be one of {tuple(TTA_VIEWS)}, got {self.tta!r}")
        if self.input_form not in INPUT_FORMS:
            problems.append(f"input_form must be one of {INPUT_FORMS}, got {self.input_form!r}")
        if self.clahe_clip < 0:
            problems.append(f"clahe_clip must be >= 0 (0: no CLAHE), got {self.clahe_clip}")
        if self.resize < 0:
            problems.append(f"resize must be 0 (native) or a side length, got {self.resize}")
        if self.tile_size < INFERENCE_MULTIPLE or not 0 <= self.tile_overlap < self.tile_size:
            problems.append(f"need tile_size >= {INFERENCE_MULTIPLE} and 0 <= tile_overlap < tile_size, got "
                            f"{self.tile_size}, {self.tile_overlap}")
        if self.upscale_below < 0 or self.upscale_to <= 0 or self.max_upscale < 1:
            problems.append(f"need upscale_below >= 0 (0: never), upscale_to > 0 and max_upscale >= 1, got "
                            f"{self.upscale_below}, {self.upscale_to}, {self.max_upscale}")
        if self.max_untiled_pixels < 1:
            problems.append(f"max_untiled_pixels must be positive, got {self.max_untiled_pixels}")
        for name in ("fg_threshold", "marker_threshold", "border_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} is a probability, got {getattr(self, name)}")
        if min(self.min_marker_area, self.min_object_area) < 0:
            problems.append("min_marker_area and min_object_area are pixel counts and must be >= 0")
        if problems:
            raise ValueError("invalid segmentation recipe: " + "; ".join(problems))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Recipe:
        """From params.yaml's `prepare`, `inference` and `postprocess` sections."""
        merged = {**params["prepare"], **params["inference"], **params["postprocess"]}
        return cls.from_dict({key: value for key, value in merged.items() if key in _FIELDS})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        unknown = set(values) - _FIELDS
        if unknown:
            raise ValueError(f"invalid segmentation recipe: unknown setting(s) {sorted(unknown)}")
        types = {field.name: field.type for field in dataclasses.fields(cls)}
        cast = {"float": float, "int": int, "bool": bool, "str": str}
        values = dict(values)
        if isinstance(values.get("tta"), bool):  # recipes stored before `tta` named its views
            values["tta"] = "flips" if values["tta"] else "none"
        return cls(**{key: cast[types[key]](value) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


_FIELDS = {field.name for field in dataclasses.fields(Recipe)}


def _view(x: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    x = np.rot90(x, turns)
    return x[:, ::-1] if mirror else x


def _unview(x: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    return np.rot90(x[:, ::-1] if mirror else x, -turns)


def probability_maps(model, image: np.ndarray, recipe: Recipe, identity: np.ndarray | None = None) -> np.ndarray:
    """HxWx2 foreground/border probabilities of a uint8 preprocessed image; with `tta`, the mean
    over the recipe's views (each map turned back), which the model sees as different images.
    `identity`: the maps of the image as it is, when a pass has already made them (not run again)."""
    x = image.astype(np.float32) / 255.0
    total = None
    for turns, mirror in TTA_VIEWS[recipe.tta]:
        if identity is not None and (turns, mirror) == (0, False):
            maps = identity
        else:
            maps = predict_maps(model, np.ascontiguousarray(_view(x, turns, mirror)), multiple=INFERENCE_MULTIPLE,
                                tile_size=recipe.tile_size, overlap=recipe.tile_overlap,
                                max_untiled_pixels=recipe.max_untiled_pixels)
            maps = _unview(maps, turns, mirror)
        total = maps if total is None else total + maps
    return total / len(TTA_VIEWS[recipe.tta])


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter, in pixels, of the labelled objects (0 when there are none)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2.0 * np.sqrt(areas / np.pi))) if areas.size else 0.0


def upscale_factor(diameter: float, recipe: Recipe) -> float:
    """How much to enlarge an image whose nuclei measure `diameter` pixels across: the network
    separates small nuclei better at about the size most of its training nuclei have."""
    if not 0.0 < diameter < recipe.upscale_below:
        return 1.0
    return min(recipe.max_upscale, recipe.upscale_to / diameter)


def segmentation_maps(model, image: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The HxWx2 maps the instances are made from: `probability_maps`, or, when a first pass
    without TTA finds nuclei smaller than `upscale_below` pixels, those of the enlarged image
    brought back to the image's size."""
    if recipe.upscale_below <= 0:
        return probability_maps(model, image, recipe)
    first = probability_maps(model, image, dataclasses.replace(recipe, tta="none"))
    factor = upscale_factor(median_diameter(labels_of_maps(first, recipe, *first.shape[:2])), recipe)
    if factor == 1.0:
        return probability_maps(model, image, recipe, identity=first)
    height, width = image.shape[:2]
    enlarged = cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_LINEAR)
    maps = probability_maps(model, enlarged, recipe)
    return cv2.resize(maps, (width, height), interpolation=cv2.INTER_AREA)


def labels_of_maps(maps: np.ndarray, recipe: Recipe, height: int, width: int) -> np.ndarray:
    """uint16 instance labels at (height, width) from HxWx2 probability maps, by the recipe's
    post-processing."""
    labels = labels_from_maps(maps[..., 0], maps[..., 1], fg_threshold=recipe.fg_threshold,
                              marker_threshold=recipe.marker_threshold, border_threshold=recipe.border_threshold,
                              min_marker_area=recipe.min_marker_area, min_object_area=recipe.min_object_area,
                              fill_holes=recipe.fill_holes)
    return resize_labels(labels.astype(np.uint16), height, width)


def segment_prepared(model, image: np.ndarray, recipe: Recipe, height: int, width: int) -> np.ndarray:
    """uint16 instance labels at (height, width) of an image already through `preprocess`."""
    return labels_of_maps(segmentation_maps(model, image, recipe), recipe, height, width)


def prepared_image(image: np.ndarray, recipe: Recipe) -> np.ndarray:
    """An image as read from disk, as the network sees it (the recipe's `preprocess`)."""
    return preprocess(image, **preprocessing(recipe.to_dict()))


def segment(model, image: np.ndarray, recipe: Recipe) -> np.ndarray:
    """uint16 instance labels, at the image's own size, of an image as read from disk."""
    return segment_prepared(model, prepared_image(image, recipe), recipe, *image.shape[:2])
