"""Whole-image inference: shapes, odd sizes, and tiled == untiled."""

import keras
import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.infer import predict_maps
from nucseg.core.unet import build_unet, required_multiple

MULTIPLE = required_multiple(2)  # depth-2 U-Net


@pytest.fixture(scope="module")
def unet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_unet(depth=2, base_filters=4)  # random weights; predict_on_batch = inference mode


@pytest.fixture(scope="module")
def pointwise() -> keras.Model:
    """1x1 convolutions only: output depends on nothing but the pixel itself, so any tiling
    must reproduce the untiled result exactly; a misplaced tile or bad blending would not."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 1, activation="tanh")(inputs)
    outputs = keras.layers.Conv2D(2, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def _nuclei_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Dim noisy background with bright disks, so the maps vary a lot from pixel to pixel."""
    rng = np.random.default_rng(seed)
    image = rng.random((height, width, 3), dtype=np.float32) * 0.2
    for _ in range(height * width // 800 + 1):
        rr, cc = disk((rng.integers(height), rng.integers(width)), rng.integers(4, 12), shape=(height, width))
        image[rr, cc] += 0.7
    return np.clip(image, 0.0, 1.0)


def test_untiled_shape_dtype_and_range(unet):
    image = _nuclei_image(96, 136)
    maps = predict_maps(unet, image, multiple=MULTIPLE)
    assert maps.shape == (96, 136, 2)
    assert maps.dtype == np.float32
    assert np.all((maps >= 0) & (maps <= 1))


def test_tiled_matches_untiled(unet):
    image = _nuclei_image(96, 136)
    whole = predict_maps(unet, image, multiple=MULTIPLE)
    tiled = predict_maps(unet, image, multiple=MULTIPLE, max_untiled_pixels=0, tile_size=64, overlap=32)
    assert tiled.shape == whole.shape
    # Tiles see less context near their edges than the whole image does and the receptive field
    # radius (~23 px) exceeds half the overlap, so cross-faded pixels differ a little. The bounds
    # are relative to what a 1-pixel misplacement of the untiled maps costs, because the output
    # contrast of a random network depends on its initialisation (measured over 8 seeds: mean
    # error <= 0.05x and max error <= 0.14x the shift's).
    shifts = [np.abs(np.roll(whole, 1, axis=axis) - whole) for axis in (0, 1)]
    mean_scale = min(s.mean() for s in shifts)
    max_scale = min(s.max() for s in shifts)

    def within_tolerance(result: np.ndarray) -> bool:
        diff = np.abs(result - whole)
        return diff.mean() < 0.2 * mean_scale and diff.max() < 0.5 * max_scale

    assert within_tolerance(tiled)
    assert not within_tolerance(np.roll(tiled, 1, axis=0))
    assert not within_tolerance(np.roll(tiled, 1, axis=1))


@pytest.mark.parametrize("shape", [(96, 136), (100, 150), (37, 61), (250, 64)])
def test_tiling_is_exact_for_a_pointwise_model(pointwise, shape):
    image = _nuclei_image(*shape, seed=sum(shape))
    whole = predict_maps(pointwise, image, multiple=MULTIPLE)
    tiled = predict_maps(
        pointwise, image, multiple=MULTIPLE, max_untiled_pixels=0, tile_size=64, overlap=24, tiles_per_batch=3
    )
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_default_tiling_on_an_image_above_the_untiled_limit(pointwise):
    image = _nuclei_image(1030, 1100)  # > 1_048_576 px: 3x3 tiles of 512 with a flush last row
    tiled = predict_maps(pointwise, image)
    whole = predict_maps(pointwise, image, max_untiled_pixels=image.shape[0] * image.shape[1])
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("shape", [(37, 61), (97, 33), (5, 300), (300, 5), (1, 1)])
@pytest.mark.parametrize("tiled", [False, True])
def test_odd_and_thin_images(unet, shape, tiled):
    image = _nuclei_image(*shape)
    options = dict(max_untiled_pixels=0, tile_size=64, overlap=32) if tiled else {}
    maps = predict_maps(unet, image, multiple=MULTIPLE, **options)
    assert maps.shape == (*shape, 2)
    assert np.all(np.isfinite(maps))


def test_tile_size_is_rounded_to_the_multiple(unet):
    image = _nuclei_image(70, 90)
    maps = predict_maps(unet, image, multiple=MULTIPLE, max_untiled_pixels=0, tile_size=50, overlap=16)
    assert maps.shape == (70, 90, 2)


def test_rejects_bad_inputs(unet):
    with pytest.raises(ValueError, match="HxWxC"):
        predict_maps(unet, np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        predict_maps(unet, np.zeros((32, 32, 3), np.float32), max_untiled_pixels=0, tile_size=32, overlap=32)
