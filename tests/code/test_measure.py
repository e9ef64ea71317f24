"""Per-nucleus measurements against hand-computed values on synthetic disks; GeoJSON outlines."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.measure import COLUMNS, measure, outlines_geojson


def two_disks():
    labels = np.zeros((60, 80), np.uint16)
    labels[disk((20, 25), 8)] = 1
    labels[disk((40, 60), 5)] = 2
    image = np.full((60, 80), 10, np.uint16)
    image[labels == 1] = 100
    image[labels == 2] = 1000
    return labels, image


def test_measurements_match_hand_computed_values():
    labels, image = two_disks()
    table = measure(labels, image)
    assert list(table.columns) == COLUMNS and list(table["label"]) == [1, 2]
    first, second = table.iloc[0], table.iloc[1]
    area_1, area_2 = int((labels == 1).sum()), int((labels == 2).sum())
    assert first["area"] == area_1 and second["area"] == area_2
    assert (first["centroid_row"], first["centroid_col"]) == (20.0, 25.0)  # a disk is symmetric about its centre
    assert (second["centroid_row"], second["centroid_col"]) == (40.0, 60.0)
    assert first["mean_intensity"] == 100.0 and second["mean_intensity"] == 1000.0
    assert first["integrated_intensity"] == 100.0 * area_1
    assert first["eccentricity"] == pytest.approx(0.0, abs=0.05) and first["solidity"] > 0.95
    assert first["perimeter"] == pytest.approx(2 * np.pi * 8, rel=0.1)


def test_colour_intensity_is_the_mean_of_rgb():
    labels, grey = two_disks()
    colour = np.dstack([grey, grey * 2, grey * 3])
    assert measure(labels, colour)["mean_intensity"].tolist() == [200.0, 2000.0]


def test_mismatched_sizes_are_refused():
    labels, image = two_disks()
    with pytest.raises(ValueError, match="one size"):
        measure(labels, image[:-1])


def test_no_nuclei_gives_an_empty_table():
    assert measure(np.zeros((10, 10), np.uint16), np.zeros((10, 10), np.uint8)).empty


def test_geojson_outlines_enclose_each_nucleus():
    from matplotlib.path import Path as Polygon

    labels, _ = two_disks()
    collection = outlines_geojson(labels)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    for feature, (label, centre, radius) in zip(collection["features"], [(1, (20, 25), 8), (2, (40, 60), 5)]):
        assert feature["properties"]["label"] == label and feature["properties"]["objectType"] == "detection"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all()  # closed
        polygon = Polygon(ring)
        assert polygon.contains_point((centre[1] + 0.5, centre[0] + 0.5))  # x, y of the centre pixel
        assert not polygon.contains_point((centre[1] + radius + 2, centre[0] + 0.5))
