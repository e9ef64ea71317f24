"""The maps cache: a network's outputs reused when model, recipe and data are unchanged, and
computed again when any of them changes; results never depend on what the cache held."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.maps_cache import CachedNetwork, cached, prune
from nucseg.core.segment import Recipe, segment_prepared


class Counted:
    """A real Keras network that counts the batches it is asked for."""

    def __init__(self, seed: int):
        import keras

        from nucseg.core.unet import build_unet

        keras.utils.set_random_seed(seed)
        self.network, self.calls = build_unet(depth=2, base_filters=4, dropout=0.0, batchnorm=False), 0

    def predict_on_batch(self, batch):
        self.calls += 1
        return self.network.predict_on_batch(batch)


def disks_image(seed: int = 0, side: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((side, side, 3), np.uint8)
    for _ in range(6):
        rr, cc = disk(tuple(rng.integers(12, side - 12, 2)), 8, shape=image.shape[:2])
        image[rr, cc] = 200
    return image


def segment_counting(network: Counted, directory, image: np.ndarray, recipe: Recipe) -> tuple[np.ndarray, int]:
    """Labels of `image` through a fresh cache over `directory`, and the batches computed for them
    (the network's one other call is the cache's fingerprint of it)."""
    before, cache = network.calls, CachedNetwork(network, directory, 2**30)
    labels, _ = segment_prepared(cache, image, recipe, *image.shape[:2])
    assert network.calls - before == cache.misses + 1
    return labels, cache.misses


@pytest.fixture(scope="module")
def networks():
    return Counted(seed=1), Counted(seed=2)


def test_the_maps_are_reused_when_model_recipe_and_data_are_unchanged(networks, tmp_path):
    network, _ = networks
    recipe, image = Recipe(tta="flips", rescale=False), disks_image()
    first, computed = segment_counting(network, tmp_path, image, recipe)
    assert computed >= 4  # the four views of `flips`
    again, computed = segment_counting(network, tmp_path, image, recipe)
    assert computed == 0
    np.testing.assert_array_equal(again, first)
    # post-processing never reaches the network: other thresholds reuse the maps
    _, computed = segment_counting(network, tmp_path, image, dataclasses.replace(recipe, fg_threshold=0.3,
                                                                                  min_object_area=4))
    assert computed == 0


@pytest.mark.parametrize("change", ["model", "recipe", "data"])
def test_the_maps_are_computed_again_when_model_recipe_or_data_change(networks, tmp_path, change):
    network, other = networks
    recipe, image = Recipe(tta="flips", rescale=False), disks_image()
    segment_counting(network, tmp_path, image, recipe)
    if change == "model":
        _, computed = segment_counting(other, tmp_path, image, recipe)
    elif change == "recipe":  # the views and the scale the network sees
        _, computed = segment_counting(network, tmp_path, image, dataclasses.replace(recipe, tta="dihedral"))
        assert computed == 4  # the flips' four views are cached; the quarter turns are new
        _, computed = segment_counting(network, tmp_path, image, dataclasses.replace(recipe, rescale=True))
    else:
        _, computed = segment_counting(network, tmp_path, disks_image(seed=1), recipe)
    assert computed > 0


def test_a_hit_returns_exactly_what_the_network_computes(networks, tmp_path):
    network, _ = networks
    batch = np.random.default_rng(3).random((2, 64, 64, 3), dtype=np.float32)
    fresh = CachedNetwork(network, tmp_path, 2**30).predict_on_batch(batch)
    read_back = CachedNetwork(network, tmp_path, 2**30)
    np.testing.assert_array_equal(read_back.predict_on_batch(batch), fresh)
    assert (read_back.hits, read_back.misses) == (1, 0)
    np.testing.assert_array_equal(fresh, np.asarray(network.network.predict_on_batch(batch)))


def test_an_unreadable_entry_is_computed_again_and_replaced(networks, tmp_path, caplog):
    network, _ = networks
    batch = np.random.default_rng(4).random((1, 32, 32, 3), dtype=np.float32)
    expected = CachedNetwork(network, tmp_path, 2**30).predict_on_batch(batch)
    [entry] = tmp_path.glob("*/*.npy")
    entry.write_bytes(b"half a file")
    again = CachedNetwork(network, tmp_path, 2**30)
    np.testing.assert_array_equal(again.predict_on_batch(batch), expected)
    assert again.misses == 1 and "unreadable cached maps" in caplog.text and str(entry) in caplog.text
    assert np.load(entry).shape == expected.shape


def test_the_least_recently_used_maps_go_first_once_over_budget(tmp_path):
    for age, name in enumerate(["old", "middle", "new"]):
        path = tmp_path / "ab" / f"{name}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, np.zeros(1000, np.float32))
        os.utime(path, (1000 + age, 1000 + age))
    size = (tmp_path / "ab" / "old.npy").stat().st_size
    assert prune(tmp_path, 2 * size) == 1
    assert sorted(p.stem for p in tmp_path.glob("*/*.npy")) == ["middle", "new"]
    assert prune(tmp_path, 2 * size) == 0


def test_the_cache_can_be_turned_off(networks, monkeypatch, tmp_path):
    network, _ = networks
    monkeypatch.setenv("NUCSEG_MAPS_CACHE", str(tmp_path))
    monkeypatch.setenv("NUCSEG_MAPS_CACHE_GB", "0")
    off = cached(network)
    batch = np.zeros((1, 32, 32, 3), np.float32)
    off.predict_on_batch(batch)
    off.predict_on_batch(batch)
    assert off.misses == 2 and not list(tmp_path.iterdir()) and "off" in off.summary()
