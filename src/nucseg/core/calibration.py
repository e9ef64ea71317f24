"""Post-processing chosen by data: the mask, seed and size thresholds that give a trained model
its best DSB on `val`.

The network runs once per image (at the recipe's working scale); each candidate only re-runs the
watershed and the metric (seconds), so every trained model gets its own thresholds, stored in its
recipe. The `package` stage chooses them, not the training: a post-processing change then costs
a search over kept maps, not a training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg.core import metrics
from nucseg.core.data import training_diameter
from nucseg.core.segment import Recipe, in_image_pixels, labels_of_maps, segmentation_maps

SEARCHABLE = ("fg_threshold", "marker_threshold", "border_threshold", "min_marker_area", "min_object_area")


def coordinate_search(score: Callable[[dict[str, Any]], float], grid: Mapping[str, Sequence[Any]],
                      start: Mapping[str, Any], max_rounds: int = 3) -> tuple[dict[str, Any], pd.DataFrame]:
    """The grid point `score` rates best, found one setting at a time (each setting set to its
    best value with the others held, round after round until no setting moves), and every point
    scored, best first (`candidate` numbers them in the order tried; 0 is `start`). Far fewer
    evaluations than the full grid; on a tie the current value stays, so a flat score never moves
    a setting."""
    scored: dict[tuple, float] = {}

    def rate(values: dict[str, Any]) -> float:
        key = tuple(sorted(values.items()))
        if key not in scored:
            scored[key] = float(score(values))
        return scored[key]

    best = dict(start)
    rate(best)  # the start is candidate 0, also when there is nothing to search
    for _ in range(max_rounds):
        moved = False
        for name, options in grid.items():
            current = rate(best)
            for option in options:
                candidate = {**best, name: option}
                if rate(candidate) > current:
                    best, current, moved = candidate, rate(candidate), True
        if not moved:
            break
    table = pd.DataFrame([{"candidate": order, **dict(key), "dsb": value}
                          for order, (key, value) in enumerate(scored.items())])
    return best, table.sort_values("dsb", ascending=False, kind="stable", ignore_index=True)


def recipe_dsb(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], recipe: Recipe,
               factors: Sequence[float] | None = None) -> float:
    """Mean DSB over images of the labels `recipe`'s post-processing makes of precomputed maps
    (of images the network saw rescaled by `factors`, 1 by default)."""
    factors = factors or [1.0] * len(maps)
    scores = [metrics.dsb_score(truth, labels_of_maps(image_maps, in_image_pixels(recipe, factor), *truth.shape))
              for image_maps, truth, factor in zip(maps, truths, factors)]
    return float(np.mean(scores)) if scores else float("nan")


def search_recipe(model, samples: Sequence[dict[str, Any]], recipe: Recipe, grid: Mapping[str, Sequence[Any]],
                  max_rounds: int = 3, desc: str = "thresholds") -> tuple[Recipe, pd.DataFrame]:
    """`recipe` with the post-processing settings of `grid` that score best on `samples`
    (prepared images with their true `labels`), and the table of every candidate scored."""
    unknown = sorted(set(grid) - set(SEARCHABLE))
    if unknown:
        raise ValueError(f"postprocess.search: cannot search {unknown}; searchable: {list(SEARCHABLE)}")
    made = [segmentation_maps(model, sample["image"], recipe)
            for sample in tqdm(samples, desc=f"{desc}: probability maps", unit="image")]
    maps, factors = [m for m, _ in made], [size.factor for _, size in made]
    truths = [sample["labels"] for sample in samples]
    progress = tqdm(desc=f"{desc}: candidates", unit="candidate")

    def score(values: dict[str, Any]) -> float:
        progress.update()
        return recipe_dsb(maps, truths, dataclasses.replace(recipe, **values), factors)

    start = {name: getattr(recipe, name) for name in grid}
    best, table = coordinate_search(score, {name: list(options) for name, options in grid.items()}, start, max_rounds)
    progress.close()
    return dataclasses.replace(recipe, **best), table


def chosen_recipe(model, params: Mapping[str, Any], train: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]],
                  desc: str = "thresholds") -> tuple[Recipe, pd.DataFrame, dict[str, float]]:
    """The recipe of a network trained on `train`: params' `prepare`, `inference` and
    `postprocess`, the nucleus size it learnt (`train`'s median), and the thresholds of
    `postprocess.search` that score best on the `val` images (with their labels). Returns it with
    every candidate scored and val DSB under the params' thresholds and under the chosen ones."""
    grid = params["postprocess"].get("search") or {}
    trained_at = dataclasses.replace(Recipe.from_params(params), nucleus_diameter=training_diameter(train))
    recipe, table = search_recipe(model, val, trained_at, grid, max_rounds=int(params["postprocess"]["search_rounds"]),
                                  desc=desc)
    return recipe, table, {"val_dsb_params_thresholds": float(table.loc[table["candidate"] == 0, "dsb"].iloc[0]),
                           "val_dsb": float(table["dsb"].iloc[0])}
