"""The registered model is the whole segmenter: an MLflow pyfunc that loads, predicts on good
and bad images alike, carries its recipe and code, and answers over HTTP."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import free_port, wait_until_up
from skimage.draw import disk

from nucseg import io
from nucseg.core.segment import Recipe, segment

BIN = Path(sys.executable).parent


def unet():
    import keras

    from nucseg.core.unet import build_unet

    keras.utils.set_random_seed(3)
    return build_unet(depth=2, base_filters=4, dropout=0.0, batchnorm=False)


def disk_image(height=48, width=64) -> np.ndarray:
    image = np.full((height, width), 20, np.uint8)
    image[disk((20, 20), 8, shape=image.shape)] = 220
    image[disk((30, 45), 6, shape=image.shape)] = 180
    return image


RECIPE = Recipe(fg_threshold=0.45, min_object_area=0, tile_size=64, tile_overlap=16)


@pytest.fixture
def logged(mlflow_store, tmp_path, monkeypatch):
    import mlflow

    from nucseg.mlops import tracking
    from nucseg.mlops.segmenter_model import log_segmenter

    monkeypatch.chdir(tmp_path)
    tracking.setup()
    network = unet()
    with mlflow.start_run():
        uri = log_segmenter(network, RECIPE)
    return uri, network


def test_model_config_diameter_overrides_the_estimate_and_a_bad_one_is_refused(logged):
    import mlflow

    uri, network = logged
    frame = pd.DataFrame({"image": [io.encode_png(disk_image())]})
    given = mlflow.pyfunc.load_model(uri, model_config={"diameter": 80}).predict(frame)
    assert given.loc[0, "diameter"] == 80.0
    assert given.loc[0, "scale"] == round(segment(network, disk_image(), RECIPE, diameter=80)[1].factor, 4) < 1
    with pytest.raises(Exception, match="diameter"):
        mlflow.pyfunc.load_model(uri, model_config={"diameter": "large"})


def test_model_config_quality_sets_the_views_and_an_unknown_level_is_refused_by_name(logged):
    import mlflow

    from nucseg.core.quality import at_quality
    from nucseg.mlops.segmenter_model import load_segmenter

    uri, network = logged
    frame = pd.DataFrame({"image": [io.encode_png(disk_image())]})
    best = mlflow.pyfunc.load_model(uri, model_config={"quality": "best"})
    assert best.unwrap_python_model().recipe == at_quality(RECIPE, "best") != RECIPE
    labels = io.decode_image(best.predict(frame).loc[0, "labels"])
    np.testing.assert_array_equal(labels, segment(network, disk_image(), at_quality(RECIPE, "best"))[0])
    assert load_segmenter(uri, quality="best")[1].tta == "dihedral"
    assert load_segmenter(uri)[1] == RECIPE  # default: the recipe the model was evaluated with
    with pytest.raises(Exception, match="unknown quality level 'fastest': choose one of fast, default, best"):
        mlflow.pyfunc.load_model(uri, model_config={"quality": "fastest"})
    with pytest.raises(ValueError, match="unknown quality level 'fastest'"):
        load_segmenter(uri, quality="fastest")


def test_an_int8_network_that_loses_accuracy_is_refused_and_one_that_keeps_it_is_offered(tmp_path):
    from nucseg.core import runtime
    from nucseg.mlops.segmenter_model import Int8Check, choose_runtime

    crops = runtime.calibration_crops([np.dstack([disk_image()] * 3)], 32, 8)
    scores = iter([0.80, 0.797, 0.80, 0.70])  # float, then int8: first 0.003 behind, then 0.1
    (tmp_path / "kept").mkdir()
    kept = choose_runtime(unet(), tmp_path / "kept", Int8Check(crops, lambda network: next(scores)))
    assert kept["int8"] == "kept" and (kept["float_dsb"], kept["int8_dsb"]) == (0.8, 0.797)
    assert (tmp_path / "kept" / "network-int8.onnx").exists() and kept["onnx_int8_seconds_per_megapixel"] > 0
    (tmp_path / "refused").mkdir()
    refused = choose_runtime(unet(), tmp_path / "refused", Int8Check(crops, lambda network: next(scores)))
    assert refused["int8"].startswith("refused: DSB 0.7 trails float 0.8") and refused["runtime"] != "onnx-int8"
    assert not (tmp_path / "refused" / "network-int8.onnx").exists() and (tmp_path / "refused" / "network.onnx").exists()


def test_round_trip_predicts_good_and_bad_images(logged):
    import mlflow

    uri, network = logged
    model = mlflow.pyfunc.load_model(uri)
    grey16 = disk_image().astype(np.uint16) * 200
    import tifffile
    from io import BytesIO

    tiff = BytesIO()
    tifffile.imwrite(tiff, grey16)
    frame = pd.DataFrame({"image": [io.encode_png(disk_image()), b"not an image", tiff.getvalue(), b""]})
    out = model.predict(frame)
    assert list(out.columns) == ["labels", "nuclei", "diameter", "scale", "error"] and len(out) == 4
    expected, size = segment(network, disk_image(), RECIPE)  # the same network and recipe, in process
    labels = io.decode_image(out.loc[0, "labels"])
    np.testing.assert_array_equal(labels, expected)
    assert (out.loc[0, "diameter"], out.loc[0, "scale"]) == (round(size.diameter, 2), round(size.factor, 4))
    assert labels.dtype == np.uint16 and out.loc[0, "nuclei"] == len(np.unique(expected[expected > 0]))
    assert out.loc[0, "error"] == "" and out.loc[2, "error"] == ""
    assert "row 1" in out.loc[1, "error"] and "cannot decode" in out.loc[1, "error"]
    assert "row 3" in out.loc[3, "error"] and "empty" in out.loc[3, "error"]
    assert out.loc[1, "nuclei"] == 0 and out.loc[1, "labels"] == b""


def test_model_carries_recipe_code_signature_and_example(logged):
    import json

    import mlflow

    from nucseg.mlops.segmenter_model import load_segmenter

    uri, _ = logged
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert (local / "code" / "nucseg" / "core" / "segment.py").exists()  # loads without this repo installed
    recipe_file = next(local.rglob("recipe.json"))
    assert Recipe.from_dict(json.loads(recipe_file.read_text())) == RECIPE
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["labels", "nuclei", "diameter", "scale", "error"]
    assert info.saved_input_example_info is not None
    assert load_segmenter(uri)[1] == RECIPE


def test_network_travels_as_onnx_and_both_runtimes_segment_alike(logged):
    import mlflow

    from nucseg.core.runtime import OnnxNetwork
    from nucseg.mlops.segmenter_model import load_segmenter

    uri, network = logged
    info = mlflow.models.get_model_info(uri)
    choice = info.metadata["runtime_choice"]
    assert choice["runtime"] in ("onnx", "keras") and choice["max_difference"] < 1e-4
    assert choice["keras_seconds_per_megapixel"] > 0 and choice["onnx_seconds_per_megapixel"] > 0
    on_onnx, recipe = load_segmenter(uri, runtime_name="onnx")
    on_keras, _ = load_segmenter(uri, runtime_name="keras")
    assert isinstance(on_onnx, OnnxNetwork) and not isinstance(on_keras, OnnxNetwork)
    np.testing.assert_array_equal(segment(on_onnx, disk_image(), recipe)[0], segment(on_keras, disk_image(), recipe)[0])
    assert "onnxruntime==" in (Path(mlflow.artifacts.download_artifacts(uri)) / "requirements.txt").read_text()


def test_unloadable_onnx_falls_back_to_keras(logged, tmp_path, caplog):
    import mlflow

    from nucseg.core.runtime import OnnxNetwork
    from nucseg.mlops.segmenter_model import load_segmenter

    uri, network = logged
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "copy")))
    next(local.rglob("network.onnx")).write_bytes(b"truncated")
    with caplog.at_level("WARNING"):
        fallback, recipe = load_segmenter(str(local), runtime_name="onnx")
    assert not isinstance(fallback, OnnxNetwork)
    assert "network.onnx: not a loadable ONNX model" in caplog.text and "with Keras" in caplog.text
    np.testing.assert_array_equal(segment(fallback, disk_image(), recipe)[0], segment(network, disk_image(), RECIPE)[0])


def test_unknown_runtime_is_refused(logged):
    from nucseg.mlops.segmenter_model import load_segmenter

    with pytest.raises(Exception, match="runtime must be one of"):
        load_segmenter(logged[0], runtime_name="tensorrt")


@pytest.mark.slow
def test_served_model_answers_over_http(logged, tmp_path):
    import requests

    uri, network = logged
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", server, tmp_path / "serve.log", "mlflow models serve")
        image = base64.b64encode(io.encode_png(disk_image())).decode()
        body = {"dataframe_split": {"columns": ["image"], "data": [[image], [base64.b64encode(b"junk").decode()]]}}
        reply = requests.post(f"{url}/invocations", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        rows = reply.json()["predictions"]
        labels = io.decode_image(base64.b64decode(rows[0]["labels"]))
        np.testing.assert_array_equal(labels, segment(network, disk_image(), RECIPE)[0])
        assert rows[0]["nuclei"] == len(np.unique(labels[labels > 0])) and rows[0]["error"] == ""
        assert "cannot decode" in rows[1]["error"]
    finally:
        server.terminate()
        server.wait(timeout=30)
