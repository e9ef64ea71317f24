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
