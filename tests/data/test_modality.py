"""Stage `modality`: features, cluster naming, fit/predict and the stage's outputs, on synthetic images."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nucseg import io
from nucseg.core import modality
from nucseg.stages import modality as modality_stage
from nucseg.core.modality import FEATURES, fit, image_features, log_saturation, name_clusters, predict

KINDS = ("fluorescence", "brightfield", "histology")


def spots(shape, rng, n: int, radius=(3, 7)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for _ in range(n):
        centre = (rng.integers(0, shape[0]), rng.integers(0, shape[1]))
        mask[disk(centre, rng.integers(*radius), shape=shape)] = True
    return mask


def fluorescence_image(rng, shape=(64, 64), noise=4.0, sixteen_bit=False) -> np.ndarray:
    """Black background, a few bright nuclei; grey (2-D)."""
    image = rng.normal(8, noise, shape)
    image[spots(shape, rng, 5)] = rng.uniform(150, 250)
    image = np.clip(image, 0, 255)
    if sixteen_bit:
        return np.round(image * 257).astype(np.uint16)
    return np.round(image).astype(np.uint8)


def brightfield_image(rng, shape=(64, 64), noise=4.0, rgba=False) -> np.ndarray:
    """Light grey background with dark blobs; the three channels identical (saturation 0)."""
    grey = rng.normal(rng.uniform(190, 215), noise, shape)
    grey[spots(shape, rng, 5)] = rng.uniform(60, 110)
    grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if rgba:
        return np.concatenate([rgb, np.full(shape + (1,), 255, np.uint8)], axis=2)
    return rgb


def histology_image(rng, shape=(64, 64), noise=4.0) -> np.ndarray:
    """Pink (eosin) tissue with purple (haematoxylin) nuclei, per-channel noise."""
    pink = np.array([235, 170, 200]) + rng.uniform(-10, 10, 3)
    purple = np.array([120, 60, 150]) + rng.uniform(-10, 10, 3)
    image = np.broadcast_to(pink, shape + (3,)).copy()
    image[spots(shape, rng, 6)] = purple
    image += rng.normal(0, noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


MAKERS = {"fluorescence": fluorescence_image, "brightfield": brightfield_image, "histology": histology_image}


def synthetic_set(rng, per_kind: int) -> tuple[list[np.ndarray], list[str]]:
    images, kinds = [], []
    for i in range(per_kind):
        for kind in KINDS:
            shape = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            extra = {}
            if kind == "fluorescence":
                extra = {"sixteen_bit": i % 3 == 0}
            elif kind == "brightfield":
                extra = {"rgba": i % 2 == 0}
            images.append(MAKERS[kind](rng, shape, noise=float(rng.uniform(2, 8)), **extra))
            kinds.append(kind)
    return images, kinds


# ---- features ----

def test_features_of_a_fluorescence_image():
    image = np.zeros((50, 50), np.uint8)
    for centre in ((10, 10), (30, 35), (40, 12)):
        image[disk(centre, 4, shape=image.shape)] = 200
    median, log_sat = image_features(image)
    assert median == 0.0  # the background covers most of the image
    assert log_sat == pytest.approx(np.log(0.01))  # grey: saturation exactly 0
    assert median <= modality.FLUORESCENCE_MAX_MEDIAN


def test_features_of_a_brightfield_image():
    image = np.full((50, 50, 3), 204, np.uint8)  # 204 / 255 = 0.8
    image[disk((25, 25), 8, shape=(50, 50))] = 80
    median, log_sat = image_features(image)
    assert median == pytest.approx(0.8, abs=1e-6)
    assert log_sat == pytest.approx(np.log(0.01))
    assert median > modality.FLUORESCENCE_MAX_MEDIAN


def test_features_of_a_histology_image():
    image = np.empty((50, 50, 3), np.uint8)
    image[:] = (230, 184, 207)  # grey (230+184+207)/3/255 = 0.8118, saturation (230-184)/230 = 0.2
    image[disk((25, 25), 6, shape=(50, 50))] = (120, 60, 150)  # saturation 0.6 on 113 of 2500 pixels
    median, log_sat = image_features(image)
    assert median == pytest.approx(621 / 3 / 255, abs=1e-5)
    n_nucleus = int(disk((25, 25), 6, shape=(50, 50))[0].size)
    mean_sat = (0.2 * (2500 - n_nucleus) + 0.6 * n_nucleus) / 2500
    assert log_sat == pytest.approx(np.log(mean_sat + 0.01), abs=1e-4)
    assert log_sat > log_saturation(modality.HISTOLOGY_MIN_SATURATION)


def test_features_do_not_depend_on_storage():
    rng = np.random.default_rng(3)
    grey = brightfield_image(rng)[..., 0]
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full(grey.shape + (1,), 255, np.uint8)], axis=2)
    reference = image_features(grey)
    for image in (rgb, rgba, grey.astype(np.uint16) * 257, grey.astype(np.float32) / 255):
        np.testing.assert_allclose(image_features(image), reference, atol=1e-5)


def test_features_of_synthetic_kinds_fall_on_the_expected_sides_of_the_thresholds():
    rng = np.random.default_rng(0)
    for _ in range(5):
        fl, bf, hist = (image_features(MAKERS[k](rng)) for k in KINDS)
        assert fl[0] <= modality.FLUORESCENCE_MAX_MEDIAN < bf[0]
        assert hist[0] > modality.FLUORESCENCE_MAX_MEDIAN
        assert bf[1] == pytest.approx(np.log(0.01))
        assert hist[1] > log_saturation(modality.HISTOLOGY_MIN_SATURATION) > bf[1]


# ---- naming ----

CENTROIDS = {  # (median, log_saturation)
    "fluorescence": [0.05, np.log(0.01)],
    "brightfield": [0.80, np.log(0.01)],
    "histology": [0.75, np.log(0.25)],
}


@pytest.mark.parametrize("order", list(itertools.permutations(KINDS)))
def test_name_clusters_does_not_depend_on_cluster_order(order):
    centroids = np.array([CENTROIDS[name] for name in order])
    assert name_clusters(centroids) == list(order)


def test_name_clusters_without_a_stained_cluster_has_no_histology():
    centroids = np.array([[0.8, np.log(0.01)], [0.1, np.log(0.02)], [0.6, np.log(0.02 + 0.01)]])
    assert name_clusters(centroids) == ["brightfield", "fluorescence", "brightfield-2"]


def test_name_clusters_numbers_repeated_names():
    centroids = np.array([[0.02, np.log(0.01)], [0.2, np.log(0.01)], [0.8, np.log(0.3)]])
    assert name_clusters(centroids) == ["fluorescence", "fluorescence-2", "histology"]


# ---- fit and predict ----

@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(7)
    images, kinds = synthetic_set(rng, per_kind=10)
    features = np.stack([image_features(image) for image in images])
    return fit(features, n_clusters=3, seed=42), features, kinds


def test_fit_recovers_the_three_modalities(fitted):
    model, features, kinds = fitted
    assert sorted(model["names"]) == sorted(KINDS)
    assert model["features"] == FEATURES
    assert predict(model, features) == kinds


def test_predict_on_new_images(fitted):
    model, _, _ = fitted
    rng = np.random.default_rng(1234)
    images, kinds = synthetic_set(rng, per_kind=4)
    assert predict(model, np.stack([image_features(image) for image in images])) == kinds
    assert predict(model, image_features(histology_image(rng))) == ["histology"]  # one row works too


def test_model_is_json_serialisable_and_round_trips(fitted):
    model, features, kinds = fitted
    loaded = json.loads(json.dumps(model))
    assert loaded == model
    assert predict(loaded, features) == kinds


def test_fit_names_survive_a_reseed(fitted):
    _, features, kinds = fitted
    for seed in (0, 1, 2):
        assert predict(fit(features, 3, seed), features) == kinds


def test_fit_caps_clusters_at_number_of_images():
    rng = np.random.default_rng(5)
    features = np.stack([image_features(fluorescence_image(rng)), image_features(histology_image(rng))])
    model = fit(features, n_clusters=3, seed=0)
    assert sorted(model["names"]) == ["fluorescence", "histology"]


# ---- the whole stage on files ----

def write_image(path: Path, image: np.ndarray) -> Path:
    if image.ndim == 3 and image.shape[2] == 4:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA))
    else:
        io.write_png(path, image)
    return path


def test_run_writes_table_model_grid_and_counts(params, tmp_path):
    rng = np.random.default_rng(11)
    rows, truth = [], {}
    for split, per_kind in (("train", 8), ("test", 2)):
        images, kinds = synthetic_set(rng, per_kind)
        for index, (image, kind) in enumerate(zip(images, kinds)):
            image_id = f"{split}{index:02d}"
            path = write_image(tmp_path / "data" / image_id / "images" / f"{image_id}.png", image)
            rows.append({"id": image_id, "split": split, "image_path": str(path)})
            truth[image_id] = kind
    manifest_path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest_path, index=False)

    params["modality"].update(n_clusters=3, thumb_size=32, examples_per_cluster=3, seed=42)
    out = {name: tmp_path / "out" / name for name in ("modality.csv", "model.json", "grid.png", "counts.json")}
    counts = modality_stage.run(params, manifest_path=manifest_path, table_path=out["modality.csv"],
                          model_path=out["model.json"], grid_path=out["grid.png"], counts_path=out["counts.json"])

    table = pd.read_csv(out["modality.csv"])
    assert list(table.columns) == ["id", "split", "modality", *FEATURES]
    assert list(table["id"]) == [r["id"] for r in rows]
    assert dict(zip(table["id"], table["modality"])) == truth

    model = json.loads(out["model.json"].read_text())
    assert sorted(model["names"]) == sorted(KINDS)
    assert predict(model, table[FEATURES].to_numpy()) == list(table["modality"])

    grid = io.read_image(out["grid.png"])
    assert grid.dtype == np.uint8 and grid.shape == (3 * 32, 3 * 32, 3)  # a row per modality, 3 examples

    assert json.loads(out["counts.json"].read_text()) == counts
    assert counts == {"test": {k: 2 for k in sorted(KINDS)}, "train": {k: 8 for k in sorted(KINDS)}}
    assert sum(counts["train"].values()) == 24 and sum(counts["test"].values()) == 6
