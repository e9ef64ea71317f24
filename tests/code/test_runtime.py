"""The ONNX export runs the same network: same maps through whole-image and tiled inference,
images of any size, and a clear error for a file ONNX Runtime cannot load."""

import keras
import numpy as np
import pytest

from nucseg.core import runtime
from nucseg.core.infer import predict_maps
from nucseg.core.unet import build_unet, required_multiple


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    keras.utils.set_random_seed(5)
    model = build_unet(depth=2, base_filters=4, dropout=0.0)
    path = tmp_path_factory.mktemp("onnx") / "network.onnx"
    runtime.export_onnx(model, path)
    return model, runtime.OnnxNetwork(path)


@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (128, 64)])
def test_export_reproduces_the_network_at_any_size(networks, shape):
    model, onnx_network = networks
    assert runtime.max_difference(model, onnx_network, shape, channels=3) < runtime.MAX_EXPORT_DIFFERENCE


def test_tiled_inference_is_the_same_on_both_runtimes(networks):
    model, onnx_network = networks
    image = np.random.default_rng(0).random((100, 140, 3), dtype=np.float32)
    options = dict(multiple=required_multiple(2), tile_size=64, overlap=16, max_untiled_pixels=1000)
    np.testing.assert_allclose(predict_maps(onnx_network, image, **options), predict_maps(model, image, **options),
                               atol=runtime.MAX_EXPORT_DIFFERENCE)


def test_timing_is_per_megapixel(networks):
    _, onnx_network = networks
    seconds = runtime.seconds_per_megapixel(onnx_network, 3, shapes=((32, 32),), repeats=1)
    assert 0 < seconds < 60


def test_unloadable_file_is_named(tmp_path):
    broken = tmp_path / "network.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(runtime.RuntimeUnavailable, match="network.onnx: not a loadable ONNX model"):
        runtime.OnnxNetwork(broken)


def test_calibration_crops_are_seeded_scaled_and_at_most_the_image():
    from nucseg.core.runtime import calibration_crops

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 200, 3), dtype=np.uint8), rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)]
    crops = calibration_crops(images, 128, 10, seed=1)
    assert len(crops) == 10 and {c.shape for c in crops} <= {(1, 128, 128, 3), (1, 64, 80, 3)}
    assert all(c.dtype == np.float32 and 0 <= c.min() and c.max() <= 1 for c in crops)
    assert all(np.array_equal(a, b) for a, b in zip(crops, calibration_crops(images, 128, 10, seed=1)))
    with pytest.raises(ValueError, match="no images"):
        calibration_crops([], 128, 4)
