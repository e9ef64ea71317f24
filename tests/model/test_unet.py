"""U-Net builds, learns on synthetic nuclei, survives a .keras round trip, loads local encoder weights."""

import keras
import numpy as np
import pytest
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from nucseg.core.losses import BCEDiceLoss, PixelDice, PixelIoU, bce_dice_loss
from nucseg.core.unet import build_unet, required_multiple


def _synthetic_nuclei(count: int = 16, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with bright disks; targets are (foreground, inner border) like prepare's."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.1, 0.05, (count, size, size, 3)).astype(np.float32)
    targets = np.zeros((count, size, size, 2), np.float32)
    for image, target in zip(images, targets):
        labels = np.zeros((size, size), np.int32)
        for label in range(1, rng.integers(2, 5) + 1):
            rr, cc = disk(tuple(rng.integers(4, size - 4, 2)), rng.integers(3, 7), shape=labels.shape)
            labels[rr, cc] = label
        image[labels > 0] += 0.6
        target[..., 0] = labels > 0
        target[..., 1] = find_boundaries(labels, mode="inner")
    return np.clip(images, 0.0, 1.0), targets


def _compile(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=bce_dice_loss(channel_weights=(1.0, 2.0)),
        metrics=[PixelIoU(), PixelDice()],
    )
    return model


def _batch_statistics_loss(model: keras.Model, images: np.ndarray, targets: np.ndarray) -> float:
    return float(keras.ops.convert_to_numpy(model.loss(targets, model(images, training=True))))


def test_tiny_unet_learns_synthetic_nuclei():
    keras.utils.set_random_seed(0)
    images, targets = _synthetic_nuclei()
    model = _compile(build_unet(depth=2, base_filters=4, dropout=0.0))
    # Scored with batch statistics: after only 30 steps BatchNorm's moving averages (momentum
    # 0.99) are still ~75% their initial values, so inference-mode evaluate() would lag behind.
    before = _batch_statistics_loss(model, images, targets)
    model.fit(images, targets, batch_size=8, epochs=15, shuffle=True, verbose=0)  # 30 steps
    after = _batch_statistics_loss(model, images, targets)
    assert after < 0.8 * before, (before, after)  # measured 0.57-0.65x over 4 seeds


@pytest.mark.parametrize("depth", [3, 4])
def test_output_shape_and_dtype(depth):
    assert required_multiple(depth) == 2**depth
    model = build_unet(depth=depth, base_filters=4)
    maps = model.predict_on_batch(np.random.default_rng(0).random((2, 48, 80, 3), dtype=np.float32))
    assert maps.shape == (2, 48, 80, 2)
    assert maps.dtype == np.float32
    assert np.all((maps >= 0) & (maps <= 1))
    assert model.output.dtype == "float32"
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == depth


def test_options_shape_the_graph():
    lean = build_unet(depth=2, base_filters=4, dropout=0.0, batchnorm=False, input_channels=1, output_channels=3)
    names = [layer.name for layer in lean.layers]
    assert not any("bn" in n or "dropout" in n for n in names)
    assert lean.input.shape == (None, None, None, 1)
    assert lean.output.shape == (None, None, None, 3)
    full = build_unet(depth=4, base_filters=4)
    dropped = [layer.name for layer in full.layers if isinstance(layer, keras.layers.SpatialDropout2D)]
    assert dropped == ["enc2_dropout", "enc3_dropout", "bottleneck_dropout"]
    with pytest.raises(ValueError, match="encoder"):
        build_unet(encoder="resnet")


def test_compiled_model_round_trips_through_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    images, targets = _synthetic_nuclei(count=8)
    model = _compile(build_unet(depth=2, base_filters=4))
    model.fit(images, targets, batch_size=8, epochs=1, verbose=0)  # optimizer state, moved BN stats
    path = tmp_path / "unet.keras"
    model.save(path)

    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict_on_batch(images), model.predict_on_batch(images))
    assert isinstance(restored.loss, BCEDiceLoss)
    assert restored.loss.get_config() == model.loss.get_config()
    expected = model.evaluate(images, targets, verbose=0, return_dict=True)
    assert restored.evaluate(images, targets, verbose=0, return_dict=True) == pytest.approx(expected)
    # Resuming training needs the optimizer state too.
    assert int(restored.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 1


def test_mobilenetv2_encoder_loads_local_weights(tmp_path):
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    # Perturb every variable, BatchNorm statistics included, so nothing can match by initialiser.
    reference.set_weights(
        [w * rng.uniform(0.5, 1.5, w.shape) + rng.normal(0, 0.01, w.shape) for w in reference.get_weights()]
    )
    path = tmp_path / "mobilenetv2.weights.h5"
    reference.save_weights(path)

    model = build_unet(encoder="mobilenetv2", encoder_weights=str(path), base_filters=4)
    encoder = model.get_layer("encoder")
    compared = 0
    for layer in encoder.layers:
        if not layer.weights:
            continue  # e.g. the input layer, whose auto-generated name differs
        for loaded, saved in zip(layer.get_weights(), reference.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(loaded, saved)
            compared += 1
    assert compared > 200  # the whole trunk up to block_16_project, not a few layers

    assert required_multiple(4, "mobilenetv2") == 32
    maps = model.predict_on_batch(np.random.default_rng(1).random((1, 64, 96, 3), dtype=np.float32))
    assert maps.shape == (1, 64, 96, 2)
    assert np.all(np.isfinite(maps))


def test_mobilenetv2_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_unet(encoder="mobilenetv2", encoder_weights=str(missing))
