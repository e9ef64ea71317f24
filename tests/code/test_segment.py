"""The segmenter: its recipe, test-time flips, and one path for evaluation and scoring (sizes: test_scale.py)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nucseg import io
from nucseg.core.segment import Recipe, prepared_image, probability_maps, segment, segment_prepared, segmentation_maps
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
    with pytest.raises(ValueError, match="min_scale <= 1 <= max_scale"):
        Recipe(max_scale=0.5)
    with pytest.raises(ValueError, match="size_band_low <= 1 <= size_band_high"):
        Recipe(size_band_high=0.9)
    old = Recipe.from_dict({"upscale_below": 14, "upscale_to": 20, "max_upscale": 2.0})  # before `rescale`
    assert old == Recipe()
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
    plain = probability_maps(model, image, Recipe(tta="none"))
    averaged = probability_maps(model, image, Recipe(tta=tta))
    np.testing.assert_allclose(averaged, plain, atol=1e-6)


def test_tta_averages_the_flips_of_an_asymmetric_model():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    model = random_unet()
    views = [probability_maps(model, np.ascontiguousarray(image[::r, ::c]), Recipe(tta="none"))[::r, ::c]
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
            maps = probability_maps(model, np.ascontiguousarray(view), Recipe(tta="none"))
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


class CountingNetwork:
    """A network that counts the passes it is asked for."""

    def __init__(self, model):
        self.model, self.passes = model, 0

    def predict_on_batch(self, batch):
        self.passes += 1
        return self.model.predict_on_batch(batch)


def test_nuclei_of_the_training_size_are_segmented_as_they_are_and_the_first_pass_is_a_view():
    image, network = disks_image(radius=10), CountingNetwork(bright_is_nucleus_model())
    recipe = Recipe(nucleus_diameter=20, tta="flips", min_object_area=0)
    maps, size = segmentation_maps(network, image, recipe)
    assert size.factor == 1.0 and size.diameter == pytest.approx(20, rel=0.1)
    assert network.passes == 4  # the flips; the first pass (their identity view) settled the size
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
    evaluated, _ = segment_prepared(model, sample["image"], recipe, *sample["labels"].shape)
    scored, _ = segment(model, io.read_image(tmp_path / "s" / "images" / "s.png"), recipe)
    assert scored.shape == shape and scored.dtype == np.uint16
    np.testing.assert_array_equal(evaluated, scored)
