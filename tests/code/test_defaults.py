"""One source of every default: where code keeps a default (to be callable without params),
params.yaml holds the same value, so the pipeline never runs on a value nobody can see."""

from __future__ import annotations

import inspect

from nucseg.core import modality, postprocess, tiles
from nucseg.core.segment import Recipe


def test_a_recipe_made_without_params_is_the_one_params_yaml_describes(default_params):
    assert Recipe.from_params(default_params) == Recipe()
    assert {key: default_params["postprocess"][key] for key in postprocess.DEFAULTS} == postprocess.DEFAULTS


def test_modality_thresholds(default_params):
    cfg = default_params["modality"]
    assert (cfg["fluorescence_max_median"], cfg["histology_min_saturation"]) == \
        (modality.FLUORESCENCE_MAX_MEDIAN, modality.HISTOLOGY_MIN_SATURATION)


def test_seam_matching(default_params):
    cfg, defaults = default_params["split"], inspect.signature(tiles.find_links).parameters
    assert (cfg["seam_min_correlation"], cfg["seam_max_smoothness"], cfg["seam_window"]) == \
        tuple(defaults[name].default for name in ("min_correlation", "max_smoothness", "window"))
