"""Quality levels: what each changes in the recipe, refusal of unknown levels, and what
measuring them reports (on synthetic disks a bright-is-nucleus network segments exactly)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.quality import QUALITY_LEVELS, at_quality, check_quality, measure_levels
from nucseg.core.segment import Recipe
from test_segment import CountingNetwork, bright_is_nucleus_model


def disks_sample(modality: str) -> dict:
    image = np.full((64, 96, 3), 20, np.uint8)
    labels = np.zeros((64, 96), np.uint16)
    for label, centre in enumerate([(16, 16), (40, 30), (20, 60), (45, 75)], start=1):
        rr, cc = disk(centre, 9, shape=labels.shape)
        image[rr, cc], labels[rr, cc] = 240, label
    return {"id": modality, "modality": modality, "image": image, "labels": labels}


def test_each_level_sets_the_views_and_default_is_the_models_own_recipe():
    recipe = Recipe(tta="flips", fg_threshold=0.4)
    assert at_quality(recipe, "default") is recipe
    assert at_quality(recipe, "fast") == Recipe(tta="none", fg_threshold=0.4)
    assert at_quality(recipe, "best") == Recipe(tta="dihedral", fg_threshold=0.4)
    assert set(QUALITY_LEVELS) == {"fast", "default", "best"}


@pytest.mark.parametrize("level", ["fastest", "Fast", ""])
def test_an_unknown_level_is_refused_by_name(level):
    with pytest.raises(ValueError, match=f"unknown quality level '{level}': choose one of fast, default, best"):
        check_quality(level)
    with pytest.raises(ValueError, match="unknown quality level"):
        at_quality(Recipe(), level)


def test_measured_levels_report_dsb_per_modality_and_speed_and_fast_runs_fewer_passes():
    samples = [disks_sample("fluorescence"), disks_sample("histology")]
    recipe = Recipe(tta="flips", nucleus_diameter=18, min_object_area=0)
    network = CountingNetwork(bright_is_nucleus_model())
    passes = {}
    for level in QUALITY_LEVELS:
        before = network.passes
        measured = measure_levels(network, samples, recipe, levels=(level,))[level]
        passes[level] = network.passes - before
        assert measured["dsb"] == measured["dsb_fluorescence"] == measured["dsb_histology"] == 1.0
        assert measured["megapixels_per_second"] > 0
    assert passes == {"fast": 2, "default": 8, "best": 16}  # views x 2 images; the first pass settles the size
