"""The segmenter: its recipe, test-time flips, small nuclei enlarged, and one path for evaluation and scoring."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.draw import disk

from nucseg import io
from nucseg.core.segment import (Recipe, median_diameter, prepared_image, probability_maps, segment, segment_prepared,
                                 segmentation_maps, upscale_factor)
from nucseg.stages.prepare import prepare_sample


def pointwise_model():
    """A 1x1-convolution network: it treats every pixel alike, so flipping the input flips the output."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 1, activation="sigmoid")])


def random_unet():
    import keras

    from nucseg.core.unet import build_unet

    keras.utils.set_random_seed(1)
    return build_unet(depth=2, base_filters=4, dropout=0.0, batchnorm=False)


def test_recipe_round_trips_and_rejects_bad_values():
    recipe = Recipe(fg_threshold=0.4, resize=256, tta="dihedral")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict({"tta": True}).tta == "flips"  # as recipes stored it before the views had names
    assert Recipe.from_dict({"tta": False}).tta == "none"
    with pytest.raises(ValueError, match="tta must be one of"):
        Recipe(tta="rotations")
    with pytest.raises(ValueError, match="fg_threshold is a probability"):
        Recipe(fg_threshold=1.5)
    with pytest.raises(ValueError, match="tile_overlap < tile_size"):
        Recipe(tile_size=64, tile_overlap=64)
    with pytest.raises(ValueError, match="max_upscale >= 1"):
        Recipe(upscale_below=16, max_upscale=0.5)
    with pytest.raises(ValueError, match="unknown setting"):
        Recipe.from_dict({"fg_treshold": 0.5})


def test_recipe_from_params_takes_its_three_sections(default_params):
    recipe = Recipe.from_params(default_params)
    assert recipe.normalize_high == default_params["prepare"]["normalize_high"]
    assert recipe.tile_size == default_params["inference"]["tile_size"]
    assert recipe.min_object_area == default_params["postprocess"]["min_object_area"]


@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_tta_of_a_symmetric_model_equals_no_tta(tta):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    model = pointwise_model()
    plain = probability_maps(model, image, Recipe())
    averaged = probability_maps(model, image, Recipe(tta=tta))
    np.testing.assert_allclose(averaged, plain, atol=1e-6)


def test_tta_averages_the_flips_of_an_asymmetric_model():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    model = random_unet()
    views = [probability_maps(model, np.ascontiguousarray(image[::r, ::c]), Recipe())[::r, ::c]
             for r, c in ((1, 1), (-1, 1), (1, -1), (-1, -1))]
    np.testing.assert_allclose(probability_maps(model, image, Recipe(tta="flips")), np.mean(views, axis=0), atol=1e-5)


def test_dihedral_tta_averages_the_eight_turned_and_mirrored_views():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # not square: turned views change shape
    model = random_unet()
    views = []
    for turns in range(4):
        for mirror in (False, True):
            view = np.rot90(image, turns)[:, ::-1] if mirror else np.rot90(image, turns)
            maps = probability_maps(model, np.ascontiguousarray(view), Recipe())
            views.append(np.rot90(maps[:, ::-1] if mirror else maps, -turns))
    dihedral = probability_maps(model, image, Recipe(tta="dihedral"))
    assert dihedral.shape == (32, 64, 2)
    np.testing.assert_allclose(dihedral, np.mean(views, axis=0), atol=1e-5)
    assert not np.allclose(dihedral, probability_maps(model, image, Recipe(tta="flips")), atol=1e-4)


def bright_is_nucleus_model():
    """`pointwise_model` set so that foreground probability is ~1 on bright pixels, ~0 on dark ones; no separator."""
    model = pointwise_model()
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[..., 0] = 10.0
    model.layers[0].set_weights([kernel, np.array([-15.0, -10.0], np.float32)])
    return model


def disks_image(radius: int) -> np.ndarray:
    image = np.full((64, 96, 3), 20, np.uint8)
    for centre in [(16, 16), (40, 30), (20, 60), (45, 75)]:
        image[disk(centre, radius, shape=image.shape[:2])] = 240
    return image


def test_median_diameter_is_of_the_equal_area_circle():
    labels = np.zeros((40, 80), np.uint16)
    labels[0:10, 0:10], labels[0:20, 20:40], labels[0:30, 45:75] = 1, 2, 5  # areas 100, 400, 900; 3, 4 absent
    assert median_diameter(labels) == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert median_diameter(np.zeros((8, 8), np.uint16)) == 0.0


@pytest.mark.parametrize("diameter, expected", [(10.0, 2.0), (12.5, 1.6), (8.0, 2.0), (16.0, 1.0), (30.0, 1.0),
                                                (0.0, 1.0)])
def test_upscale_factor_enlarges_only_small_nuclei_and_at_most_max_upscale(diameter, expected):
    recipe = Recipe(upscale_below=16, upscale_to=20, max_upscale=2)
    assert upscale_factor(diameter, recipe) == pytest.approx(expected)
    assert upscale_factor(diameter, Recipe()) == 1.0  # upscale_below 0: never


@pytest.mark.parametrize("tta", ["none", "flips"])
def test_small_nuclei_are_segmented_on_the_enlarged_image(tta):
    image, model = disks_image(radius=5), bright_is_nucleus_model()
    recipe = Recipe(upscale_below=16, upscale_to=16, max_upscale=2, tta=tta, min_object_area=0)
    factor = 16 / median_diameter(segment_prepared(model, image, Recipe(min_object_area=0), 64, 96))
    assert 1.3 < factor < 2
    enlarged = cv2.resize(image, (round(96 * factor), round(64 * factor)), interpolation=cv2.INTER_LINEAR)
    expected = cv2.resize(probability_maps(model, enlarged, recipe), (96, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(segmentation_maps(model, image, recipe), expected, atol=1e-6)
    assert segment_prepared(model, image, recipe, 64, 96).max() == 4


class CountingNetwork:
    """A network that counts the passes it is asked for."""

    def __init__(self, model):
        self.model, self.passes = model, 0

    def predict_on_batch(self, batch):
        self.passes += 1
        return self.model.predict_on_batch(batch)


def test_nuclei_at_least_upscale_below_across_are_segmented_as_they_are():
    image, network = disks_image(radius=10), CountingNetwork(bright_is_nucleus_model())
    recipe = Recipe(upscale_below=16, upscale_to=20, tta="flips", min_object_area=0)
    maps = segmentation_maps(network, image, recipe)
    assert network.passes == 4  # the first pass is the flips' identity view, not run again
    np.testing.assert_array_equal(maps, probability_maps(network.model, image, recipe))


@pytest.mark.parametrize("input_form", ["rgb", "grey"])
@pytest.mark.parametrize("resize", [0, 48])
def test_evaluation_and_scoring_give_identical_labels(tmp_path, params, resize, input_form):
    """`evaluate` segments the prepared npz image, `score` the file as read: same labels."""
    shape = (60, 90)
    labels = np.zeros(shape, np.uint8)
    image = np.full(shape, 30, np.uint16)
    for k, centre in enumerate([(20, 20), (35, 50), (25, 75)]):
        rr, cc = disk(centre, 9, shape=shape)
        labels[rr, cc] = 255
        image[rr, cc] = 3000 + 500 * k
        io.write_png(tmp_path / "s" / "masks" / f"m{k}.png", np.where(labels == 255, 255, 0).astype(np.uint8))
        labels[:] = 0
    io.write_png(tmp_path / "s" / "images" / "s.png", image)
    cfg = {**params["prepare"], "resize": resize, "input_form": input_form, "clahe_clip": 2.0}
    recipe = Recipe(resize=resize, input_form=input_form, clahe_clip=2.0, min_object_area=0, fg_threshold=0.45)
    model = random_unet()

    sample = prepare_sample(tmp_path / "s" / "images" / "s.png", tmp_path / "s" / "masks", cfg)
    np.testing.assert_array_equal(sample["image"], prepared_image(io.read_image(tmp_path / "s" / "images" / "s.png"),
                                                                 recipe))
    evaluated = segment_prepared(model, sample["image"], recipe, *sample["labels"].shape)
    scored = segment(model, io.read_image(tmp_path / "s" / "images" / "s.png"), recipe)
    assert scored.shape == shape and scored.dtype == np.uint16
    np.testing.assert_array_equal(evaluated, scored)
