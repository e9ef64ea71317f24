"""The registered model is the whole segmenter, as an MLflow pyfunc: the Keras network plus its
`Recipe` (normalisation, resize, tiling, test-time views, watershed thresholds), with this package as code,
so it loads and serves without this repository installed.

The network also travels as ONNX when the export reproduces it; the model's `runtime` config
(`onnx` or `keras`) is whichever ran faster when it was logged, and can be overridden at load
time (`mlflow.pyfunc.load_model(uri, model_config={"runtime": "keras"})`, or
`MLFLOW_PYFUNC_INFERENCE_CONFIG='{"runtime": "keras"}'` for `mlflow models serve`), as can
`threads` (ONNX Runtime threads, 0 = one per core), `diameter` (the nuclei's width in pixels,
as Cellpose users give it; by default estimated per image) and `quality` (`fast`, `default` or
`best`: the test-time views, `core.quality`; the version's `quality.*` tags say what each costs). ONNX that cannot run where the model
is loaded falls back to Keras with a warning.

Contract of `predict(DataFrame)`: a column `image` of encoded image bytes (PNG, TIFF or JPEG;
any size; 8/16-bit; grey, RGB or RGBA) in, and per row `labels` (PNG-encoded uint16 instance
labels), `nuclei` (count), `diameter` (nucleus width in pixels, estimated or given), `scale` (the
factor the image was resized by for the network) and `error` (empty, or what is wrong with that
row's image) out. One bad image never sinks the batch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.core import runtime
from nucseg.core.quality import DEFAULT_QUALITY, at_quality
from nucseg.core.segment import Recipe, segment

log = get_logger("nucseg.segmenter")

ARTIFACT_NAME = "segmenter"
OUTPUT_COLUMNS = ["labels", "nuclei", "diameter", "scale", "error"]


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """`mlflow.pyfunc` face of the segmenter; `network`, `runtime`, `stored_recipe` (as evaluated)
    and `recipe` (at the configured quality) are set by `load_context`."""

    def load_context(self, context) -> None:
        config = context.model_config or {}
        self.stored_recipe = Recipe.from_dict(json.loads(Path(context.artifacts["recipe"]).read_text()))
        self.recipe = at_quality(self.stored_recipe, str(config.get("quality") or DEFAULT_QUALITY))
        self.diameter = _diameter(config.get("diameter"))
        self.runtime = config.get("runtime", "keras")
        if self.runtime not in runtime.RUNTIMES:
            raise ValueError(f"model_config runtime must be one of {runtime.RUNTIMES}, got {self.runtime!r}")
        if self.runtime == "onnx":
            try:
                self.network = runtime.OnnxNetwork(context.artifacts["onnx"], threads=int(config.get("threads", 0)))
                log.info("the network runs with ONNX Runtime")
                return
            except (KeyError, runtime.RuntimeUnavailable) as err:
                reason = "the model has no ONNX network" if isinstance(err, KeyError) else str(err)
                log.warning("ONNX Runtime unavailable (%s): running the network with Keras", reason)
                self.runtime = "keras"
        self.network = runtime.load_keras(context.artifacts["network"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self.network, self.recipe, model_input, self.diameter)


def _diameter(value: Any) -> float | None:
    if value in (None, "", 0):
        return None
    try:
        diameter = float(value)
    except (TypeError, ValueError):
        diameter = -1.0
    if not diameter > 0:
        raise ValueError(f"model_config diameter is the nuclei's width in pixels (> 0), got {value!r}")
    return diameter


def predict_frame(network, recipe: Recipe, frame: pd.DataFrame, diameter: float | None = None) -> pd.DataFrame:
    if "image" not in frame:
        raise ValueError(f"expected a column 'image' of encoded image bytes, got columns {list(frame.columns)}")
    rows = []
    for index, data in zip(frame.index, frame["image"]):
        name = f"row {index}"
        try:
            labels, size = segment(network, io.decode_image(_as_bytes(data, name), name), recipe, diameter)
            rows.append({"labels": io.encode_png(labels, name), "nuclei": count_nuclei(labels),
                         "diameter": round(size.diameter, 2), "scale": round(size.factor, 4), "error": ""})
        except Exception as err:  # noqa: BLE001 - one bad image never sinks the batch
            rows.append({"labels": b"", "nuclei": 0, "diameter": 0.0, "scale": 0.0,
                         "error": f"{name}: {io.problem_of(err)}"})
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _as_bytes(data: Any, name: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):  # a JSON client that sent base64 text for a string column
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as err:
            raise io.ImageError(name, "image is text but not base64") from err
    raise io.ImageError(name, f"expected encoded image bytes, got {type(data).__name__}")


def count_nuclei(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def recipe_digest(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.to_json().encode()).hexdigest()[:12]


def _example_image() -> bytes:
    """A small synthetic image: two bright disks on a dark background."""
    yy, xx = np.mgrid[:64, :64]
    image = np.full((64, 64), 20, np.uint8)
    for cy, cx in ((20, 20), (40, 44)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 200
    return io.encode_png(image)


def log_segmenter(network, recipe: Recipe, name: str = ARTIFACT_NAME) -> str:
    """Log the segmenter into the active run; returns its model URI."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    import nucseg
    from nucseg.mlops.logged_models import serving_requirements, uncompiled

    plain = uncompiled(network)
    signature = ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                               outputs=Schema([ColSpec("binary", "labels"), ColSpec("long", "nuclei"),
                                               ColSpec("double", "diameter"), ColSpec("double", "scale"),
                                               ColSpec("string", "error")]))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"network": str(Path(tmp) / "network.keras"), "recipe": str(Path(tmp) / "recipe.json")}
        plain.save(artifacts["network"])
        Path(artifacts["recipe"]).write_text(recipe.to_json())
        onnx_path = Path(tmp) / "network.onnx"
        choice = choose_runtime(plain, onnx_path)
        if onnx_path.exists():
            artifacts["onnx"] = str(onnx_path)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=SegmenterModel(), artifacts=artifacts,
            code_paths=[str(Path(nucseg.__file__).parent)], signature=signature,
            input_example=pd.DataFrame({"image": [_example_image()]}), model_config={"runtime": choice["runtime"], "threads": 0, "diameter": 0,
                                                                           "quality": DEFAULT_QUALITY},
            metadata={"runtime_choice": choice},
            pip_requirements=serving_requirements(onnx="onnx" in artifacts))
    return info.model_uri


def choose_runtime(network, onnx_path: Path) -> dict[str, Any]:
    """Export `network` to `onnx_path` and time both runtimes on typical DSB sizes; the faster
    one becomes the model's runtime. An export that fails, that does not reproduce the network's
    maps, or that cannot be compared on those sizes is deleted and Keras it is. Returns the
    choice and what it was based on."""
    channels = network.inputs[0].shape[-1]
    try:
        runtime.export_onnx(network, onnx_path)
        onnx_network = runtime.OnnxNetwork(onnx_path)
        difference = runtime.max_difference(network, onnx_network, runtime.BENCHMARK_SHAPES[0], channels)
        if difference > runtime.MAX_EXPORT_DIFFERENCE:
            raise ValueError(f"the export's maps differ from the network's by {difference:.2g}")
        seconds = {"keras": runtime.seconds_per_megapixel(network, channels),
                   "onnx": runtime.seconds_per_megapixel(onnx_network, channels)}
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the model runs with Keras without ONNX
        onnx_path.unlink(missing_ok=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("no ONNX network (%s): the model will run with Keras", reason)
        return {"runtime": "keras", "reason": f"no ONNX network: {reason}"[:500]}
    faster = min(seconds, key=seconds.get)
    log.info("network seconds per megapixel: Keras %.4f, ONNX Runtime %.4f: the model runs with %s",
             seconds["keras"], seconds["onnx"], faster)
    return {"runtime": faster, "reason": "faster on typical DSB sizes", "max_difference": difference,
            "keras_seconds_per_megapixel": round(seconds["keras"], 5),
            "onnx_seconds_per_megapixel": round(seconds["onnx"], 5)}


def load_segmenter(model_uri: str, fallback_recipe: Recipe | None = None, runtime_name: str | None = None,
                   quality: str = DEFAULT_QUALITY) -> tuple[Any, Recipe]:
    """(network, recipe) of a logged or registered segmenter, the network on the model's own
    runtime or on `runtime_name`, the recipe at `quality`. A bare Keras network (registered before
    the recipe travelled with the model) gets `fallback_recipe`, or is refused without one."""
    from mlflow.exceptions import MlflowException

    # `quality` is applied here, not through model_config: versions logged before it existed
    # would ignore it there.
    loaded = mlflow.pyfunc.load_model(model_uri, model_config={"runtime": runtime_name} if runtime_name else None)
    try:
        python_model = loaded.unwrap_python_model()
    except MlflowException:
        python_model = None
    if isinstance(python_model, SegmenterModel):
        return python_model.network, at_quality(python_model.stored_recipe, quality)
    if fallback_recipe is None:
        raise ValueError(f"{model_uri} is a bare network without a segmentation recipe; register a segmenter")
    return mlflow.keras.load_model(model_uri), at_quality(fallback_recipe, quality)
