"""The registered model is the whole segmenter, as an MLflow pyfunc: the Keras network plus its
`Recipe` (normalisation, resize, tiling, flips, watershed thresholds), with this package as code,
so it loads and serves without this repository installed.

Contract of `predict(DataFrame)`: a column `image` of encoded image bytes (PNG, TIFF or JPEG;
any size; 8/16-bit; grey, RGB or RGBA) in, and per row `labels` (PNG-encoded uint16 instance
labels), `nuclei` (count) and `error` (empty, or what is wrong with that row's image) out. One
bad image never sinks the batch.
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
from nucseg.core.segment import Recipe, segment
from nucseg.mlops.logged_models import serving_requirements, uncompiled

ARTIFACT_NAME = "segmenter"
OUTPUT_COLUMNS = ["labels", "nuclei", "error"]


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """`mlflow.pyfunc` face of the segmenter; `network` and `recipe` are set by `load_context`."""

    def load_context(self, context) -> None:
        import keras

        self.network = keras.saving.load_model(context.artifacts["network"], compile=False)
        self.recipe = Recipe.from_dict(json.loads(Path(context.artifacts["recipe"]).read_text()))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self.network, self.recipe, model_input)


def predict_frame(network, recipe: Recipe, frame: pd.DataFrame) -> pd.DataFrame:
    if "image" not in frame:
        raise ValueError(f"expected a column 'image' of encoded image bytes, got columns {list(frame.columns)}")
    rows = []
    for index, data in zip(frame.index, frame["image"]):
        name = f"row {index}"
        try:
            labels = segment(network, io.decode_image(_as_bytes(data, name), name), recipe)
            rows.append({"labels": io.encode_png(labels, name), "nuclei": count_nuclei(labels), "error": ""})
        except (io.ImageError, ValueError) as err:
            rows.append({"labels": b"", "nuclei": 0, "error": str(err)})
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

    plain = uncompiled(network)
    signature = ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                               outputs=Schema([ColSpec("binary", "labels"), ColSpec("long", "nuclei"),
                                               ColSpec("string", "error")]))
    with tempfile.TemporaryDirectory() as tmp:
        network_path, recipe_path = Path(tmp) / "network.keras", Path(tmp) / "recipe.json"
        plain.save(network_path)
        recipe_path.write_text(recipe.to_json())
        info = mlflow.pyfunc.log_model(
            name=name, python_model=SegmenterModel(),
            artifacts={"network": str(network_path), "recipe": str(recipe_path)},
            code_paths=[str(Path(nucseg.__file__).parent)], signature=signature,
            input_example=pd.DataFrame({"image": [_example_image()]}), pip_requirements=serving_requirements())
    return info.model_uri


def load_segmenter(model_uri: str, fallback_recipe: Recipe | None = None) -> tuple[Any, Recipe]:
    """(network, recipe) of a logged or registered segmenter. A bare Keras network (registered
    before the recipe travelled with the model) gets `fallback_recipe`, or is refused without one."""
    from mlflow.exceptions import MlflowException

    loaded = mlflow.pyfunc.load_model(model_uri)
    try:
        python_model = loaded.unwrap_python_model()
    except MlflowException:
        python_model = None
    if isinstance(python_model, SegmenterModel):
        return python_model.network, python_model.recipe
    if fallback_recipe is None:
        raise ValueError(f"{model_uri} is a bare network without a segmentation recipe; register a segmenter")
    return mlflow.keras.load_model(model_uri), fallback_recipe
