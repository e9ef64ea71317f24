"""Segment an image: the recipe, then normalise → nuclei brought to the network's size (`scale`) →
network (tiled, test-time views averaged) → instances at the image's own size.

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

from nucseg.core.infer import MAX_UNTILED_PIXELS, MULTIPLE, TILE_OVERLAP, TILE_SIZE, predict_maps
from nucseg.core.postprocess import DEFAULTS as POSTPROCESSING
from nucseg.core.postprocess import labels_from_maps
from nucseg.core.preprocess import INPUT_FORMS, preprocess, preprocessing, resize_labels
from nucseg.core.scale import SizeEstimate, estimate_size, foreground_diameter, instance_diameter, rescale_factor

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
    input_form: str = "grey"
    clahe_clip: float = 0.0
    clahe_grid: int = 8
    tile_size: int = TILE_SIZE
    tile_overlap: int = TILE_OVERLAP
    max_untiled_pixels: int = MAX_UNTILED_PIXELS
    tta: str = "flips"
    rescale: bool = True
    nucleus_diameter: float = 19.0  # the training set's median, set by the stage that trains the network
    size_band_low: float = 0.75  # nuclei within [low, high] x nucleus_diameter are segmented as they are ...
    size_band_high: float = 1.3
    min_scale: float = 0.2  # ... others rescaled to nucleus_diameter, by a factor within these limits
    max_scale: float = 3.0
    fg_threshold: float = POSTPROCESSING["fg_threshold"]
    marker_threshold: float = POSTPROCESSING["marker_threshold"]
    border_threshold: float = POSTPROCESSING["border_threshold"]
    min_marker_area: int = POSTPROCESSING["min_marker_area"]
    min_object_area: int = POSTPROCESSING["min_object_area"]
    fill_holes: bool = POSTPROCESSING["fill_holes"]

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
        if self.clahe_grid < 1:
            problems.append(f"clahe_grid must be >= 1 (tiles per side), got {self.clahe_grid}")
        if self.resize < 0:
            problems.append(f"resize must be 0 (native) or a side length, got {self.resize}")
        if self.tile_size < MULTIPLE or not 0 <= self.tile_overlap < self.tile_size:
            problems.append(f"need tile_size >= {MULTIPLE} and 0 <= tile_overlap < tile_size, got "
                            f"{self.tile_size}, {self.tile_overlap}")
        if self.nucleus_diameter <= 0 or not 0 < self.size_band_low <= 1 <= self.size_band_high:
            problems.append(f"need nucleus_diameter > 0 and 0 < size_band_low <= 1 <= size_band_high, got "
                            f"{self.nucleus_diameter}, {self.size_band_low}, {self.size_band_high}")
        if not 0 < self.min_scale <= 1 <= self.max_scale:
            problems.append(f"need 0 < min_scale <= 1 <= max_scale, got {self.min_scale}, {self.max_scale}")
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
        unknown = set(values) - _FIELDS - {"upscale_below", "upscale_to", "max_upscale"}
        if unknown:
            raise ValueError(f"invalid segmentation recipe: unknown setting(s) {sorted(unknown)}")
        types = {field.name: field.type for field in dataclasses.fields(cls)}
        cast = {"float": float, "int": int, "bool": bool, "str": str}
        values = dict(values)
        if isinstance(values.get("tta"), bool):  # recipes stored before `tta` named its views
            values["tta"] = "flips" if values["tta"] else "none"
        for enlarging_only in ("upscale_below", "upscale_to", "max_upscale"):  # before `rescale`: today's default
            values.pop(enlarging_only, None)
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
            maps = predict_maps(model, np.ascontiguousarray(_view(x, turns, mirror)), multiple=MULTIPLE,
                                tile_size=recipe.tile_size, overlap=recipe.tile_overlap,
                                max_untiled_pixels=recipe.max_untiled_pixels)
            maps = _unview(maps, turns, mirror)
        total = maps if total is None else total + maps
    return total / len(TTA_VIEWS[recipe.tta])


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    """`image` with both sides multiplied by `factor` (area-averaged when shrinking)."""
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def size_of(model, image: np.ndarray, recipe: Recipe, diameter: float | None = None) -> tuple[SizeEstimate, np.ndarray | None]:
    """The image's nucleus size and the factor it is segmented at; with the maps of its full-size
    pass when one was made (a test-time view of the segmentation, not run again).
    `diameter`: the user's, in the image's pixels (nothing estimated)."""
    limits, band = (recipe.min_scale, recipe.max_scale), (recipe.size_band_low, recipe.size_band_high)
    if diameter is not None:
        if diameter <= 0:
            raise ValueError(f"diameter is a nucleus's width in pixels and must be > 0, got {diameter}")
        return SizeEstimate(diameter, rescale_factor(diameter, recipe.nucleus_diameter, band, limits), True), None
    if not recipe.rescale:
        return SizeEstimate(0.0, 1.0), None
    single = dataclasses.replace(recipe, tta="none")
    passes: dict[float, np.ndarray] = {}

    def maps_at(factor: float) -> np.ndarray:
        if min(image.shape[:2]) * factor < 16:  # too small to say anything: no nuclei seen
            return np.zeros((1, 1, 2), np.float32)
        passes[factor] = probability_maps(model, resized(image, factor) if factor != 1 else image, single)
        return passes[factor]

    def diameter_of(maps: np.ndarray) -> tuple[float, float]:
        return (foreground_diameter(maps[..., 0] > recipe.fg_threshold),
                instance_diameter(labels_of_maps(maps, recipe, *maps.shape[:2])))

    def handled(diameter: float) -> bool:
        return rescale_factor(diameter, recipe.nucleus_diameter, band, limits) == 1.0

    coarse_first = image.shape[0] * image.shape[1] > recipe.max_untiled_pixels  # a full-size pass is dear
    estimated = estimate_size(maps_at, diameter_of, recipe.nucleus_diameter, handled, coarse_first)
    return SizeEstimate(estimated, rescale_factor(estimated, recipe.nucleus_diameter, band, limits)), passes.get(1.0)


def segmentation_maps(model, image: np.ndarray, recipe: Recipe,
                      diameter: float | None = None) -> tuple[np.ndarray, SizeEstimate]:
    """The HxWx2 maps the instances are made from, at the image's size: `probability_maps` of
    the image rescaled so its nuclei have about the network's training size (`size_of`)."""
    size, full = size_of(model, image, recipe, diameter)
    if size.factor == 1.0:
        return probability_maps(model, image, recipe, identity=full), size
    maps = probability_maps(model, resized(image, size.factor), recipe)
    height, width = image.shape[:2]
    interpolation = cv2.INTER_AREA if size.factor > 1 else cv2.INTER_LINEAR
    return cv2.resize(maps, (width, height), interpolation=interpolation), size


def in_image_pixels(recipe: Recipe, factor: float) -> Recipe:
    """The recipe's post-processing for maps of an image the network saw shrunk by `factor`:
    its areas were chosen at the network's scale, so they grow by 1/factor² (else the seeds of one
    big nucleus' fragments pass `min_marker_area` and split it). Enlarged images keep them:
    measured on `val`, that segments small nuclei better (`benchmarks/scale.py`, docs/scale.md)."""
    if factor >= 1.0:
        return recipe
    grow = 1.0 / factor**2
    return dataclasses.replace(recipe, min_marker_area=round(recipe.min_marker_area * grow),
                               min_object_area=round(recipe.min_object_area * grow))


def labels_of_maps(maps: np.ndarray, recipe: Recipe, height: int, width: int) -> np.ndarray:
    """uint16 instance labels at (height, width) from HxWx2 probability maps, by the recipe's
    post-processing."""
    labels = labels_from_maps(maps[..., 0], maps[..., 1], fg_threshold=recipe.fg_threshold,
                              marker_threshold=recipe.marker_threshold, border_threshold=recipe.border_threshold,
                              min_marker_area=recipe.min_marker_area, min_object_area=recipe.min_object_area,
                              fill_holes=recipe.fill_holes)
    return resize_labels(labels.astype(np.uint16), height, width)


def segment_prepared(model, image: np.ndarray, recipe: Recipe, height: int, width: int,
                     diameter: float | None = None) -> tuple[np.ndarray, SizeEstimate]:
    """uint16 instance labels at (height, width) of an image already through `preprocess`, and
    the nucleus size it was segmented at."""
    maps, size = segmentation_maps(model, image, recipe, diameter)
    return labels_of_maps(maps, in_image_pixels(recipe, size.factor), height, width), size


def prepared_image(image: np.ndarray, recipe: Recipe) -> np.ndarray:
    """An image as read from disk, as the network sees it (the recipe's `preprocess`)."""
    return preprocess(image, **preprocessing(recipe.to_dict()))


def segment(model, image: np.ndarray, recipe: Recipe, diameter: float | None = None) -> tuple[np.ndarray, SizeEstimate]:
    """uint16 instance labels, at the image's own size, of an image as read from disk, and the
    nucleus size it was segmented at. `diameter`: the nuclei's width in the image's pixels, when
    the user knows it (else estimated)."""
    prepared = prepared_image(image, recipe)
    if diameter is not None and prepared.shape[:2] != image.shape[:2]:  # `resize`: into the network's pixels
        diameter *= prepared.shape[0] / image.shape[0]
    return segment_prepared(model, prepared, recipe, *image.shape[:2], diameter=diameter)
