"""Nucleus size: estimated within 20 % on synthetic disks of any size, images brought to the
training size in both directions, a given diameter wins, labels at the input's size."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.scale import (foreground_diameter, instance_diameter, pick_diameter, rescale_factor)
from nucseg.core.segment import Recipe, in_image_pixels, segment_prepared, size_of

from test_segment import CountingNetwork, bright_is_nucleus_model


def disks(diameter: int, count: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 image of `count` bright, non-touching disks on a dark background, and their labels."""
    side = int(diameter * 2.2 * int(np.ceil(np.sqrt(count)))) + 16
    image = np.full((side, side + 8, 3), 20, np.uint8)
    labels = np.zeros(image.shape[:2], np.uint16)
    step = diameter * 2.2
    for k in range(count):
        row, col = divmod(k, int(np.ceil(np.sqrt(count))))
        centre = (8 + step * (row + 0.5), 8 + step * (col + 0.5))
        rr, cc = disk(centre, diameter / 2, shape=image.shape[:2])
        image[rr, cc] = 230
        labels[rr, cc] = k + 1
    return image, labels


def test_instance_diameter_is_of_the_equal_area_circle():
    labels = np.zeros((40, 80), np.uint16)
    labels[0:10, 0:10], labels[0:20, 20:40], labels[0:30, 45:75] = 1, 2, 5  # areas 100, 400, 900; 3, 4 absent
    assert instance_diameter(labels) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert instance_diameter(np.zeros((8, 8), np.uint16)) == 0.0


def test_foreground_diameter_sees_one_nucleus_in_a_clump_and_ignores_specks():
    image, labels = disks(20, count=4)
    foreground = labels > 0
    assert foreground_diameter(foreground) == pytest.approx(20, rel=0.1)
    clump = foreground.copy()
    clump[:, :] |= np.roll(foreground, 14, axis=1)  # every disk now overlaps a copy of itself
    assert foreground_diameter(clump) == pytest.approx(20, rel=0.15)
    specks = np.zeros((50, 50), bool)
    specks[::10, ::10] = True
    assert foreground_diameter(specks) == 0.0


def test_the_pass_where_both_measures_agree_gives_the_size():
    # full size: fragments (instances 10 px) in 100 px nuclei; a quarter: both ~25 px
    measured = {1.0: (60.0, 10.0), 0.5: (45.0, 30.0), 0.25: (25.0, 24.0)}
    assert pick_diameter(measured, training_diameter=20) == pytest.approx(4 * np.sqrt(25 * 24))
    assert pick_diameter({1.0: (0.0, 0.0)}, 20) == 0.0


@pytest.mark.parametrize("diameter, expected", [(20, 1.0), (15, 1.0), (40, 1.0), (10, 2.0), (5, 3.0), (50, 0.4),
                                                (200, 0.2), (0, 1.0), (27, 1.0)])
def test_rescale_factor_brings_nuclei_outside_the_band_to_the_training_size(diameter, expected):
    assert rescale_factor(diameter, 20, band=(0.75, 2.0), limits=(0.2, 3.0)) == pytest.approx(expected)


@pytest.mark.parametrize("max_untiled_pixels", [1_048_576, 4096])  # full-size pass first | coarse passes first
@pytest.mark.parametrize("diameter", [8, 20, 60, 120])
def test_estimate_is_within_20_percent_on_disks_of_any_size(diameter, max_untiled_pixels):
    image, _ = disks(diameter)
    recipe = Recipe(nucleus_diameter=20, min_object_area=0, max_untiled_pixels=max_untiled_pixels)
    size, _ = size_of(bright_is_nucleus_model(), image, recipe)
    assert size.diameter == pytest.approx(diameter, rel=0.2)
    assert not size.given


@pytest.mark.parametrize("diameter, shrunk, enlarged", [(60, True, False), (8, False, True), (20, False, False)])
def test_large_disks_are_shrunk_tiny_ones_enlarged_and_labels_come_back_at_the_input_size(diameter, shrunk, enlarged):
    image, truth = disks(diameter)
    recipe = Recipe(nucleus_diameter=20, min_object_area=0)
    labels, size = segment_prepared(bright_is_nucleus_model(), image, recipe, *truth.shape)
    assert (size.factor < 1) == shrunk and (size.factor > 1) == enlarged
    assert size.factor * size.diameter == pytest.approx(20, rel=0.25) or size.factor == 1.0
    assert labels.shape == truth.shape
    assert len(np.unique(labels)) - 1 == truth.max()


def test_a_given_diameter_overrides_the_estimate_and_runs_no_estimating_pass():
    image, truth = disks(60)
    network = CountingNetwork(bright_is_nucleus_model())
    recipe = Recipe(nucleus_diameter=20, min_object_area=0, tta="none")
    labels, size = segment_prepared(network, image, recipe, *truth.shape, diameter=24)
    assert size.given and size.diameter == 24 and size.factor == 1.0  # 24 px is within the band: as it is
    assert network.passes == 1
    _, size = segment_prepared(network, image, recipe, *truth.shape, diameter=100)
    assert size.factor == pytest.approx(0.2)
    with pytest.raises(ValueError, match="diameter"):
        segment_prepared(network, image, recipe, *truth.shape, diameter=0)


def test_rescale_off_segments_every_image_as_it_is():
    image, truth = disks(60)
    _, size = segment_prepared(bright_is_nucleus_model(), image, Recipe(rescale=False), *truth.shape)
    assert size.factor == 1.0 and size.diameter == 0.0


def test_area_thresholds_grow_with_the_shrinking_and_stay_when_enlarging():
    recipe = Recipe(min_marker_area=4, min_object_area=24)
    shrunk = in_image_pixels(recipe, 0.25)  # the network saw it 4x smaller: areas 16x bigger here
    assert (shrunk.min_marker_area, shrunk.min_object_area) == (64, 384)
    assert in_image_pixels(recipe, 2.0) == recipe == in_image_pixels(recipe, 1.0)
