import dataclasses

import cv2
import numpy as np
import pytest

from nucseg.core.augment import AugmentConfig, sample_crop

STRONG = AugmentConfig(
    flip=True, rot90=True, rotate_degrees=30, shear=0.2, scale_min=0.7, scale_max=1.4,
    brightness=0.1, contrast=0.2, invert=0.0,
)


def random_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    target = rng.integers(0, 2, (height, width, 2), dtype=np.uint8)
    return image, target


def squares_sample(height: int = 300, width: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares on black whose target foreground is exactly the squares."""
    fg = np.zeros((height, width), np.uint8)
    for top in range(10, height - 30, 37):
        for left in range(10, width - 30, 41):
            fg[top : top + 23, left : left + 19] = 1
    border = fg - cv2.erode(fg, np.ones((3, 3), np.uint8))
    image = np.repeat(fg[..., None] * 200 + 20, 3, axis=2).astype(np.uint8)
    return image, np.dstack([fg, border])


def test_from_params_ignores_unknown_keys_and_none_is_identity_config():
    params = {"flip": True, "rotate_degrees": 15, "scale_min": 0.8, "scale_max": 1.25, "bogus": 1}
    cfg = AugmentConfig.from_params(params)
    assert cfg.flip and cfg.rotate_degrees == 15 and cfg.scale_max == 1.25
    assert not cfg.rot90 and cfg.invert == 0.0
    assert AugmentConfig.none() == AugmentConfig()
    with pytest.raises(ValueError, match="scale_min"):
        AugmentConfig(scale_min=1.5, scale_max=1.0)


def test_shapes_dtypes_ranges():
    rng = np.random.default_rng(0)
    image, target = random_sample(rng, 260, 300)
    cfg = dataclasses.replace(STRONG, invert=0.5, brightness=0.5)
    for _ in range(10):
        x, y = sample_crop(image, target, 64, rng, cfg)
        assert x.shape == (64, 64, 3) and x.dtype == np.float32
        assert y.shape == (64, 64, 2) and y.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0


def test_no_augmentation_with_fixed_center_is_a_plain_crop():
    rng = np.random.default_rng(1)
    image, target = random_sample(rng, 100, 120)
    x, y = sample_crop(image, target, 32, rng, AugmentConfig.none(), center=(40, 70))
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), image[24:56, 54:86])
    np.testing.assert_array_equal(y, target[24:56, 54:86])


def test_random_center_without_augmentation_is_an_inside_crop():
    rng = np.random.default_rng(2)
    image, target = random_sample(rng, 50, 60)
    x, _ = sample_crop(image, target, 32, rng, AugmentConfig.none())
    pixels = np.round(x * 255).astype(np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(image, (32, 32, 3))[..., 0, :, :, :]
    matches = (windows == pixels).all(axis=(2, 3, 4))
    assert matches.sum() == 1


def test_image_smaller_than_crop_is_reflect_padded():
    rng = np.random.default_rng(3)
    image, target = random_sample(rng, 20, 30)
    x, y = sample_crop(image, target, 64, rng, AugmentConfig.none(), center=(10, 15))
    padded = np.pad(image, ((22, 22), (17, 17), (0, 0)), mode="reflect")  # numpy "reflect" == REFLECT_101
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), padded)
    np.testing.assert_array_equal(y, np.pad(target, ((22, 22), (17, 17), (0, 0)), mode="reflect"))
    x, y = sample_crop(image, target, 64, rng, STRONG)
    assert x.shape == (64, 64, 3) and y.shape == (64, 64, 2)


def test_deterministic_given_rng():
    image, target = random_sample(np.random.default_rng(4), 200, 240)
    first = sample_crop(image, target, 48, np.random.default_rng(7), STRONG)
    again = sample_crop(image, target, 48, np.random.default_rng(7), STRONG)
    other = sample_crop(image, target, 48, np.random.default_rng(8), STRONG)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_target_stays_binary_after_warps():
    rng = np.random.default_rng(5)
    image, target = squares_sample()
    for _ in range(20):
        _, y = sample_crop(image, target, 64, rng, STRONG)
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert y[..., 0].any() and y[..., 1].any()


def test_image_and_target_stay_aligned():
    rng = np.random.default_rng(6)
    image, target = squares_sample()
    geometric = dataclasses.replace(STRONG, brightness=0.0, contrast=0.0)
    for _ in range(30):
        x, y = sample_crop(image, target, 96, rng, geometric)
        bright = x.mean(axis=2) > 0.5
        fg = y[..., 0].astype(np.uint8)
        edge = cv2.dilate(fg, np.ones((3, 3), np.uint8)) != cv2.erode(fg, np.ones((3, 3), np.uint8))
        near_edge = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert fg.sum() > 200
        assert not ((bright != fg.astype(bool)) & ~near_edge).any()


def test_inversion_flips_intensities():
    rng = np.random.default_rng(7)
    image, target = random_sample(rng, 64, 64)
    x, _ = sample_crop(image, target, 32, rng, AugmentConfig(invert=1.0), center=(32, 32))
    np.testing.assert_allclose(x, 1.0 - image[16:48, 16:48] / 255.0, atol=1e-6)


@pytest.mark.parametrize("change", [
    {"gamma": 0.6}, {"intensity_min": 0.2}, {"hed_jitter": 0.3}, {"hue": 0.2}, {"saturation": 0.8},
    {"greyscale": 1.0}, {"blur_sigma": 2.0}, {"noise": 0.1},
])
def test_each_photometric_transform_changes_only_the_image(change):
    """Same seed, same crop position and geometry: the transform alters intensities within [0, 1]
    and leaves the target alone; switching it on draws no extra random numbers."""
    rng_image = np.random.default_rng(3)
    image = rng_image.integers(0, 256, (80, 90, 3), dtype=np.uint8)
    image[..., 2] //= 3  # coloured, so colour transforms have something to change
    target = rng_image.integers(0, 2, (80, 90, 2), dtype=np.uint8)
    plain_x, plain_y = sample_crop(image, target, 48, np.random.default_rng(9), AugmentConfig(flip=True))
    x, y = sample_crop(image, target, 48, np.random.default_rng(9), AugmentConfig(flip=True, **change))
    np.testing.assert_array_equal(y, plain_y)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert np.abs(x - plain_x).mean() > 0.005


def test_greyscale_drops_colour_and_dimming_darkens():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    target = np.zeros((64, 64, 2), np.uint8)
    x, _ = sample_crop(image, target, 32, np.random.default_rng(0), AugmentConfig(greyscale=1.0))
    np.testing.assert_allclose(x[..., 0], x[..., 1], atol=1e-6)
    plain, _ = sample_crop(image, target, 32, np.random.default_rng(0), AugmentConfig())
    dim, _ = sample_crop(image, target, 32, np.random.default_rng(0), AugmentConfig(intensity_min=0.2))
    assert dim.mean() < plain.mean()
    with pytest.raises(ValueError, match="intensity_min"):
        AugmentConfig(intensity_min=0.0)
