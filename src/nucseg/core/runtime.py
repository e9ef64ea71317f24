"""Where the network runs: Keras, or ONNX Runtime on an ONNX export of the same network, in
float or quantised to int8.

Inference only needs `predict_on_batch(batch) -> maps`, so any runtime plugs into
`infer.predict_maps`. ONNX Runtime skips TensorFlow's per-call overhead (faster on the small
images DSB is full of) and does not import TensorFlow at all, which makes Spark workers and model
servers start faster. int8 (static quantisation, calibrated on training crops) does the
convolutions in 8-bit integers: faster where the CPU has integer dot-product instructions, and
kept only where its labels score as the float network's do. Keras is always kept as the fallback.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

RUNTIMES = ("onnx-int8", "onnx", "keras")

# Typical DSB image sizes (padded to the inference multiple): which runtime is faster is decided
# on these, since it depends on image size (per-call overhead versus per-pixel speed).
BENCHMARK_SHAPES = ((256, 256), (256, 320), (544, 704))

# Largest probability difference tolerated between the export and the network it came from.
MAX_EXPORT_DIFFERENCE = 1e-4


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot load the network; the message says which file and why."""


class OnnxNetwork:
    """An ONNX Runtime session with the one method inference needs."""

    def __init__(self, path: str | Path, threads: int = 0):
        """`threads`: ONNX Runtime's intra-op threads, 0 for one per core; one process per core
        (Spark executors) wants 1, or the processes fight over the cores."""
        try:
            import onnxruntime
        except ImportError as err:
            raise RuntimeUnavailable(f"onnxruntime is not installed ({err})") from err
        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise RuntimeUnavailable(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from err
        self.input_name = self.session.get_inputs()[0].name

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})[0]


def calibration_crops(images: list[np.ndarray], size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` float32 1xHxWxC crops in [0, 1], at most `size` on a side, of uint8 HxWxC `images`
    (prepared training images) at seeded random places: the activations int8 quantisation
    calibrates its ranges on."""
    if not images:
        raise ValueError("no images to calibrate on")
    rng = np.random.default_rng(seed)
    crops = []
    for index in rng.choice(len(images), size=count, replace=count > len(images)):
        image = images[index]
        height, width = min(size, image.shape[0]), min(size, image.shape[1])
        y, x = int(rng.integers(0, image.shape[0] - height + 1)), int(rng.integers(0, image.shape[1] - width + 1))
        crops.append((image[y : y + height, x : x + width].astype(np.float32) / 255.0)[None])
    return crops


def quantize_onnx(float_path: str | Path, int8_path: str | Path, crops: list[np.ndarray]) -> None:
    """Static int8 quantisation of an ONNX network (weights per channel, activations calibrated on
    `crops`), with ONNX Runtime's own tools."""
    import tempfile

    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnxruntime.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{input_name: crop} for crop in crops])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_path), Crops(), quant_format=QuantFormat.QOperator,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, per_channel=True)


def load_keras(path: str | Path):
    import nucseg.config  # noqa: F401 - backend and log-level defaults must be set before keras loads
    import keras

    return keras.saving.load_model(path, compile=False)


def export_onnx(model, path: str | Path) -> None:
    """ONNX export of a Keras network that takes images of any size (needs `tf2onnx`)."""
    import nucseg.config  # noqa: F401
    import keras

    channels = model.inputs[0].shape[-1]
    spec = [keras.InputSpec(shape=(None, None, None, channels), dtype="float32")]
    model.export(str(path), format="onnx", input_signature=spec, verbose=False)


def max_difference(first, second, shape: tuple[int, int], channels: int, seed: int = 0) -> float:
    """Largest absolute difference of two networks' maps on one random batch of `shape`."""
    batch = np.random.default_rng(seed).random((1, *shape, channels), dtype=np.float32)
    return float(np.max(np.abs(np.asarray(first.predict_on_batch(batch)) - second.predict_on_batch(batch))))


def seconds_per_megapixel(network, channels: int, shapes=BENCHMARK_SHAPES, repeats: int = 3) -> float:
    """Seconds per megapixel over `shapes` (each shape's median of `repeats` calls, timed after a
    warm-up call: graph tracing and memory planning are not inference)."""
    seconds = 0.0
    for shape in shapes:
        batch = np.zeros((1, *shape, channels), np.float32)
        network.predict_on_batch(batch)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            network.predict_on_batch(batch)
            timings.append(time.perf_counter() - start)
        seconds += float(np.median(timings))
    return seconds / (sum(height * width for height, width in shapes) / 1e6)
