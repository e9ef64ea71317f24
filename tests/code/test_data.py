from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from nucseg.core.augment import AugmentConfig
from nucseg.core.data import CropDataset, draw_probabilities, load_samples, load_split, validation_crops

AUGMENT = AugmentConfig(flip=True, rot90=True, rotate_degrees=20, shear=0.1, scale_min=0.8, scale_max=1.25,
                        brightness=0.1, contrast=0.2)


def make_samples(shapes=((256, 256), (300, 420), (40, 50))) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "id": f"s{i}",
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "target": rng.integers(0, 2, (h, w, 2), dtype=np.uint8),
        }
        for i, (h, w) in enumerate(shapes)
    ]


def make_dataset(samples=None, **overrides) -> CropDataset:
    kwargs = dict(batch_size=4, crop_size=64, steps_per_epoch=5, augment=AUGMENT, seed=3, workers=2)
    return CropDataset(samples or make_samples(), **{**kwargs, **overrides})


def test_load_samples_reads_npz(tmp_path):
    image = np.full((20, 30, 3), 7, np.uint8)
    target = np.zeros((20, 30, 2), np.uint8)
    np.savez_compressed(tmp_path / "a.npz", image=image, target=target, labels=np.zeros((20, 30), np.uint16))
    [sample] = load_samples([tmp_path / "a.npz"])
    assert sample["id"] == "a" and "labels" not in sample
    assert sample["image"].dtype == np.uint8 and sample["target"].dtype == np.uint8
    np.testing.assert_array_equal(sample["image"], image)


def test_load_samples_with_labels_keeps_the_truth_for_whole_image_scoring(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:9] = 1
    labels[10:15, 20:28] = 2
    np.savez_compressed(tmp_path / "a.npz", image=np.zeros((20, 30, 3), np.uint8),
                        target=np.zeros((20, 30, 2), np.uint8), labels=labels)
    [sample] = load_samples([tmp_path / "a.npz"], with_labels=True)
    assert sample["labels"].dtype == np.uint16
    np.testing.assert_array_equal(sample["labels"], labels)
    np.savez_compressed(tmp_path / "nolabels.npz", image=np.zeros((4, 4, 3), np.uint8),
                        target=np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="nolabels.npz"):
        load_samples([tmp_path / "nolabels.npz"], with_labels=True)


def test_load_split_keeps_labels_only_for_the_sides_that_score_whole_images(tmp_path):
    for sample_id in ("a", "b"):
        np.savez_compressed(tmp_path / f"{sample_id}.npz", image=np.zeros((8, 8, 3), np.uint8),
                            target=np.zeros((8, 8, 2), np.uint8), labels=np.zeros((8, 8), np.uint16))
    (tmp_path / "split.csv").write_text("id,split,modality\na,train,fluorescence\nb,val,histology\n")
    loaded = load_split(tmp_path / "split.csv", tmp_path, ("train", "val"), labelled=("val",))
    assert "labels" not in loaded["train"][0] and "labels" in loaded["val"][0]
    assert loaded["val"][0]["modality"] == "histology"
    every_side = load_split(tmp_path / "split.csv", tmp_path, ("train", "val"))
    assert all("labels" in every_side[side][0] for side in ("train", "val"))


def test_load_samples_names_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"definitely not a zip archive")
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_samples([bad])
    with pytest.raises(ValueError, match="missing.npz"):
        load_samples([tmp_path / "missing.npz"])
    np.savez_compressed(tmp_path / "notarget.npz", image=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="notarget.npz"):
        load_samples([tmp_path / "notarget.npz"])


def test_batches_shapes_dtypes_ranges():
    dataset = make_dataset()
    assert len(dataset) == 5
    x, y = dataset[0]
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.float32
    assert y.shape == (4, 64, 64, 2) and y.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        dataset[5]


def test_batches_reproducible_regardless_of_worker_order():
    dataset, twin = make_dataset(), make_dataset()
    sequential = [dataset[i] for i in range(5)]
    with ThreadPoolExecutor(4) as pool:
        shuffled = dict(zip([4, 2, 0, 3, 1], pool.map(twin.__getitem__, [4, 2, 0, 3, 1])))
    for i, (x, y) in enumerate(sequential):
        np.testing.assert_array_equal(x, shuffled[i][0])
        np.testing.assert_array_equal(y, shuffled[i][1])
    assert not np.array_equal(sequential[0][0], sequential[1][0])


def test_epochs_differ_and_set_epoch_resumes():
    dataset = make_dataset()
    first = dataset[0][0]
    dataset.on_epoch_begin()
    dataset.on_epoch_end()
    assert dataset.epoch == 1
    second = dataset[0][0]
    assert not np.array_equal(first, second)
    resumed = make_dataset()
    resumed.set_epoch(1)
    np.testing.assert_array_equal(resumed[0][0], second)


def image_of(modality: str, height: int, width: int) -> dict:
    return {"modality": modality, "image": np.zeros((height, width, 3), np.uint8)}


def test_draws_follow_sqrt_area_and_the_balances_even_out_rare_types_and_modalities():
    # Three 100x100 fluorescence images (sqrt area 100 each), one 100x400 (sqrt area 200).
    fluorescence = [image_of("fluorescence", 100, 100)] * 3 + [image_of("fluorescence", 100, 400)]
    np.testing.assert_allclose(draw_probabilities(fluorescence), [0.2, 0.2, 0.2, 0.4])
    # type_balance 1: each type (one modality at one size) equally often, 1/2 each.
    np.testing.assert_allclose(draw_probabilities(fluorescence, type_balance=1.0), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    # type_balance 0.5: a type's share goes with sqrt(its sqrt-area total): sqrt(300) : sqrt(200).
    shares = np.sqrt([300.0, 200.0]) / np.sqrt([300.0, 200.0]).sum()
    np.testing.assert_allclose(draw_probabilities(fluorescence, type_balance=0.5),
                               [shares[0] / 3] * 3 + [shares[1]])
    # Both at 1 with a histology image: modalities share equally, and inside fluorescence the types.
    mixed = fluorescence + [image_of("histology", 100, 100)]
    np.testing.assert_allclose(draw_probabilities(mixed, modality_balance=1.0, type_balance=1.0),
                               [1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 2])
    with pytest.raises(ValueError, match="type_balance must be in"):
        draw_probabilities(mixed, type_balance=1.5)


def test_validation_crops_deterministic_and_spread():
    samples = make_samples()
    x, y = validation_crops(samples, n=6, crop_size=64, seed=0)
    x2, y2 = validation_crops(samples, n=6, crop_size=64, seed=0)
    assert x.shape == (6, 64, 64, 3) and y.shape == (6, 64, 64, 2)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # Two crops per sample, each a plain crop of its sample: the uint8 pixels occur in that image.
    for k, sample in enumerate(samples):
        corner = np.round(x[2 * k, 0, 0] * 255).astype(np.uint8)
        assert (sample["image"] == corner).all(axis=2).any()


def test_keras_fit_with_threaded_workers_tracks_epochs():
    seen: list[tuple[int, int]] = []

    class Recording(CropDataset):
        def __getitem__(self, idx):
            seen.append((self.epoch, idx))
            return super().__getitem__(idx)

    dataset = Recording(
        make_samples(), batch_size=2, crop_size=32, steps_per_epoch=2, augment=AUGMENT, seed=0, workers=2
    )
    model = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3, padding="same", activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert dataset.epoch == 2
    # fit() probes a couple of batches for shapes, then trains epoch 0 and epoch 1 on their own batches.
    assert {(0, 0), (0, 1), (1, 0), (1, 1)} <= set(seen) and max(e for e, _ in seen) == 1
