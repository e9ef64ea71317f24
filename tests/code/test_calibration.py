"""Thresholds chosen by data: the search finds the known best and stores it in the recipe."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.calibration import coordinate_search, recipe_dsb, search_recipe
from nucseg.core.segment import Recipe


class MapsAsImage:
    """A stand-in network whose foreground/separator maps are the image's first two channels,
    so a test decides the probability landscape exactly."""

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return batch[..., :2]


def cone_sample(radius: float = 13.0, size: int = 64) -> dict:
    """One nucleus of `radius`; the foreground map falls linearly from 1 at its centre and
    crosses 0.2 at its edge, so of the thresholds 0.2/0.5/0.8 only 0.2 finds its true size."""
    rows, cols = np.mgrid[0:size, 0:size]
    distance = np.hypot(rows - size // 2, cols - size // 2)
    foreground = np.clip(1.0 - distance / (radius / 0.8), 0.0, 1.0)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = np.round(foreground * 255)
    labels = np.zeros((size, size), np.uint16)
    labels[disk((size // 2, size // 2), radius, shape=labels.shape)] = 1
    return {"image": image, "labels": labels}


def test_coordinate_search_finds_the_best_grid_point_and_scores_each_once():
    calls = []

    def score(values):
        calls.append(dict(values))
        return -(values["a"] - 2) ** 2 - 10 * (values["b"] - 0.3) ** 2

    best, table = coordinate_search(score, {"a": [0, 1, 2, 3], "b": [0.1, 0.3, 0.5]}, {"a": 0, "b": 0.5})
    assert best == {"a": 2, "b": 0.3}
    assert len(calls) == len({tuple(sorted(c.items())) for c in calls})  # no point scored twice
    assert len(calls) < 4 * 3  # fewer than the full grid
    assert table.iloc[0][["a", "b"]].tolist() == [2, 0.3] and table.iloc[0]["dsb"] == pytest.approx(0.0)
    assert table.loc[table["candidate"] == 0, ["a", "b"]].values.tolist() == [[0, 0.5]]  # the start


def test_a_flat_score_keeps_the_start_and_an_empty_grid_scores_only_the_start():
    best, _ = coordinate_search(lambda values: 0.5, {"a": [1, 2, 3]}, {"a": 2})
    assert best == {"a": 2}
    best, table = coordinate_search(lambda values: 0.25, {}, {})
    assert best == {} and table[["candidate", "dsb"]].values.tolist() == [[0, 0.25]]


def test_threshold_search_recovers_the_known_best_foreground_threshold():
    samples = [cone_sample(), cone_sample(radius=11.0)]
    start = Recipe(fg_threshold=0.5, min_object_area=0)
    maps = [np.dstack([s["image"][..., 0] / 255.0, np.zeros(s["labels"].shape)]) for s in samples]
    assert recipe_dsb(maps, [s["labels"] for s in samples], start) == 0.0  # the params' threshold misses them
    chosen, table = search_recipe(MapsAsImage(), samples, start, {"fg_threshold": [0.2, 0.5, 0.8]})
    assert chosen.fg_threshold == 0.2
    assert table.iloc[0]["dsb"] > 0.9 and set(table["fg_threshold"]) == {0.2, 0.5, 0.8}
    assert chosen.min_object_area == 0 and chosen.tile_size == start.tile_size  # only searched settings move


def test_unknown_search_setting_is_refused():
    with pytest.raises(ValueError, match="cannot search"):
        search_recipe(MapsAsImage(), [cone_sample()], Recipe(), {"tile_size": [256]})
