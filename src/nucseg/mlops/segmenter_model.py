"""The registered model is the whole segmenter, as an MLflow pyfunc: the Keras network plus its
`Recipe` (normalisation, resize, tiling, test-time views, watershed thresholds), with this package as code,
so it loads and serves without this repository installed.

The network also travels as ONNX when the export reproduces it, and as int8 ONNX where that
keeps the float network's `val` DSB within 0.005; the model's `runtime` config (`onnx-int8`,
`onnx` or `keras`) is whichever ran fastest when it was logged, and can be overridden at load
time (`mlflow.pyfunc.load_model(uri, model_config={"runtime": "keras"})`, or
`MLFLOW_PYFUNC_INFERENCE_CONFIG='{"runtime": "keras"}'` for `mlflow models serve`), as can
`threads` (ONNX Runtime threads, 0 = one per core), `diameter` (the nuclei's width in pixels,
as Cellpose users give it; by default estimated per image) and `quality` (`fast`, `default` or
`best`: the test-time views, `core.quality`; the version's `quality.*` tags say what each costs).
An int8 network that cannot run where the model is loaded falls back to float ONNX, and ONNX to
Keras, with a warning.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
        chain = ONNX_FALLBACKS[self.runtime]
        for onnx, instead in zip(chain, [*chain[1:], "keras"]):
            try:
                self.network = runtime.OnnxNetwork(context.artifacts[onnx], threads=int(config.get("threads", 0)))
                self.runtime = onnx
                log.info("the network runs with ONNX Runtime (%s)", onnx)
                return
            except (KeyError, runtime.RuntimeUnavailable) as err:
                reason = f"the model has no {onnx} network" if isinstance(err, KeyError) else str(err)
                log.warning("%s unavailable (%s): running the network with %s", onnx, reason,
                            "Keras" if instead == "keras" else instead)
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


@dataclass(frozen=True)
class Int8Check:
    """What an int8 network is calibrated on (prepared training crops, `runtime.calibration_crops`)
    and held to: `dsb_of(network)`, the DSB of its labels on images nothing was fitted on (`val`),
    may trail the float network's by at most `MAX_INT8_DSB_LOSS`."""

    crops: list[np.ndarray]
    dsb_of: Callable[[Any], float]


MAX_INT8_DSB_LOSS = 0.005


def log_segmenter(network, recipe: Recipe, name: str = ARTIFACT_NAME, int8: Int8Check | None = None) -> str:
    """Log the segmenter into the active run; returns its model URI. With `int8`, an int8 network
    is offered too, where it keeps the float network's accuracy."""
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
        choice = choose_runtime(plain, Path(tmp), int8)
        artifacts.update({key: str(Path(tmp) / file) for key, file in ONNX_FILES.items() if (Path(tmp) / file).exists()})
        info = mlflow.pyfunc.log_model(
            name=name, python_model=SegmenterModel(), artifacts=artifacts,
            code_paths=[str(Path(nucseg.__file__).parent)], signature=signature,
            input_example=pd.DataFrame({"image": [_example_image()]}),
            model_config={"runtime": choice["runtime"], "threads": 0, "diameter": 0, "quality": DEFAULT_QUALITY},
            metadata={"runtime_choice": choice},
            pip_requirements=serving_requirements(onnx="onnx" in artifacts))
    return info.model_uri


# runtime -> the artifact and file of its ONNX network
ONNX_FILES = {"onnx": "network.onnx", "onnx-int8": "network-int8.onnx"}
# runtime -> the ONNX networks tried in turn before Keras
ONNX_FALLBACKS = {"onnx-int8": ("onnx-int8", "onnx"), "onnx": ("onnx",), "keras": ()}


def choose_runtime(network, folder: Path, int8: Int8Check | None = None) -> dict[str, Any]:
    """Export `network` to ONNX in `folder` (and, with `int8`, quantise it) and time each runtime on
    typical DSB sizes; the fastest becomes the model's runtime. An export that fails or does not
    reproduce the network's maps is deleted and Keras it is; an int8 network that loses more than
    `MAX_INT8_DSB_LOSS` DSB is deleted. Returns the choice and what it was based on."""
    channels = network.inputs[0].shape[-1]
    onnx_path, int8_path = folder / ONNX_FILES["onnx"], folder / ONNX_FILES["onnx-int8"]
    try:
        runtime.export_onnx(network, onnx_path)
        onnx_network = runtime.OnnxNetwork(onnx_path)
        difference = runtime.max_difference(network, onnx_network, runtime.BENCHMARK_SHAPES[0], channels)
        if difference > runtime.MAX_EXPORT_DIFFERENCE:
            raise ValueError(f"the export's maps differ from the network's by {difference:.2g}")
        networks = {"keras": network, "onnx": onnx_network}
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the model runs with Keras without ONNX
        onnx_path.unlink(missing_ok=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("no ONNX network (%s): the model will run with Keras", reason)
        return {"runtime": "keras", "reason": f"no ONNX network: {reason}"[:500]}
    choice: dict[str, Any] = {"max_difference": difference}
    if int8 is not None:
        verdict, int8_network = _int8_network(onnx_network, onnx_path, int8_path, int8)
        choice.update(verdict)
        if int8_network is not None:
            networks["onnx-int8"] = int8_network
    seconds = {name: runtime.seconds_per_megapixel(net, channels) for name, net in networks.items()}
    faster = min(seconds, key=seconds.get)
    log.info("network seconds per megapixel: %s: the model runs with %s",
             ", ".join(f"{name} {value:.4f}" for name, value in seconds.items()), faster)
    return {"runtime": faster, "reason": "fastest on typical DSB sizes", **choice,
            **{f"{name.replace('-', '_')}_seconds_per_megapixel": round(value, 5) for name, value in seconds.items()}}


def _int8_network(onnx_network, onnx_path: Path, int8_path: Path, check: Int8Check) -> tuple[dict[str, Any], Any]:
    """({int8: kept | refused: why, float_dsb, int8_dsb}, the int8 network or None)."""
    try:
        runtime.quantize_onnx(onnx_path, int8_path, check.crops)
        int8_network = runtime.OnnxNetwork(int8_path)
    except Exception as err:  # noqa: BLE001 - quantisation is an optimisation: without it, float runs
        int8_path.unlink(missing_ok=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("no int8 network (%s)", reason)
        return {"int8": f"failed: {reason}"[:500]}, None
    float_dsb, int8_dsb = round(check.dsb_of(onnx_network), 4), round(check.dsb_of(int8_network), 4)
    verdict = {"float_dsb": float_dsb, "int8_dsb": int8_dsb}
    if float_dsb - int8_dsb > MAX_INT8_DSB_LOSS:
        int8_path.unlink()
        log.info("int8 network refused: DSB %.4f against float %.4f", int8_dsb, float_dsb)
        return {**verdict, "int8": f"refused: DSB {int8_dsb} trails float {float_dsb} by more than "
                                   f"{MAX_INT8_DSB_LOSS}"}, None
    log.info("int8 network kept: DSB %.4f against float %.4f", int8_dsb, float_dsb)
    return {**verdict, "int8": "kept"}, int8_network


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
