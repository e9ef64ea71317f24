"""Scoring new images with the registry's champion: mixed formats, a corrupt file, DSB layout,
empty images, the `score`/`predict` CLI, and a registry without the model.

The model is a tiny U-Net whose weights are set by hand so that foreground = bright pixels and
border = never: its output is exact, so counts and RLE round trips can be checked precisely.
MLflow is real (sqlite in a temporary folder), not mocked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from skimage.draw import disk
from typer.testing import CliRunner

from nucseg import config, io
from nucseg.core import modality, rle
from nucseg.mlops import model_uris
from nucseg.stages import score
from nucseg.cli import app

CHAMPION = "models:/nucseg-unet@champion"
DISKS = 4


# ---- the model -------------------------------------------------------------------------

def _brightness_unet():
    """depth-2 U-Net wired so that fg = sigmoid(20 * (mean intensity - 0.5)), border ~ 0.

    enc0 carries the mean intensity in channel 0 to skip0; up0 is zeroed so the concatenation
    holds it at index 4 (4 up-channels come first); dec0 passes it on to the logits."""
    from nucseg.core.unet import build_unet

    model = build_unet(depth=2, base_filters=4, dropout=0.0, batchnorm=False)

    def set_layer(name, fill):
        kernel, bias = (np.zeros_like(w) for w in model.get_layer(name).get_weights())
        fill(kernel, bias)
        model.get_layer(name).set_weights([kernel, bias])

    set_layer("enc0_conv1", lambda k, b: k.__setitem__((1, 1, slice(0, 3), 0), 1 / 3))
    set_layer("enc0_conv2", lambda k, b: k.__setitem__((1, 1, 0, 0), 1.0))
    set_layer("up0", lambda k, b: None)
    set_layer("dec0_conv1", lambda k, b: k.__setitem__((1, 1, 4, 0), 1.0))
    set_layer("dec0_conv2", lambda k, b: k.__setitem__((1, 1, 0, 0), 1.0))

    def logits(k, b):
        k[0, 0, 0, 0], b[0], b[1] = 20.0, -10.0, -10.0

    set_layer("logits", logits)
    return model


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A sqlite MLflow store whose `nucseg-unet` version 1, a segmenter with small tiles (images
    above 64x64 pixels go through the tiler), carries the alias `champion`."""
    import mlflow

    from nucseg.core.segment import Recipe
    from nucseg.mlops import tracking
    from nucseg.mlops.segmenter_model import log_segmenter

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's default ./mlruns must not land in the repository
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        tracking.setup()
        with mlflow.start_run() as active:
            model_uri = log_segmenter(_brightness_unet(), Recipe(tile_size=64, tile_overlap=16,
                                                                 max_untiled_pixels=64 * 64))
        version = mlflow.register_model(model_uri, config.REGISTERED_MODEL).version
        mlflow.MlflowClient().set_registered_model_alias(config.REGISTERED_MODEL, "champion", version)
        yield {"root": root, "run_id": active.info.run_id, "version": str(version)}


# ---- inputs ------------------------------------------------------------------------------

def _disks(height: int, width: int, n: int = DISKS) -> np.ndarray:
    """Boolean mask of n separate disks (radius 6) on a grid."""
    mask = np.zeros((height, width), bool)
    for i in range(n):
        rr, cc = disk((12 + 20 * (i // 2), 12 + 22 * (i % 2)), 6, shape=mask.shape)
        mask[rr, cc] = True
    return mask


def _grey(height: int, width: int, low: int, high: int, dtype=np.uint8) -> np.ndarray:
    return np.where(_disks(height, width), high, low).astype(dtype)


def _write_good_images(folder):
    """RGBA PNG and RGB JPG, 16-bit grey TIFF and 8-bit grey PNG, of assorted sizes (some tiled)."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = _grey(70, 90, 20, 230)
    rgba = np.dstack([grey, grey // 2, grey, np.full_like(grey, 255)])
    cv2.imwrite(str(folder / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    tifffile.imwrite(folder / "grey16.tif", _grey(40, 50, 1000, 40000, np.uint16))
    cv2.imwrite(str(folder / "grey8.png"), _grey(100, 64, 10, 200))
    rgb = np.dstack([_grey(64, 64, 15, 240)] * 3)
    cv2.imwrite(str(folder / "colour.jpg"), rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return {"rgba": (70, 90), "grey16": (40, 50), "grey8": (100, 64), "colour": (64, 64)}


@pytest.fixture(scope="module")
def score_params(default_params, tmp_path_factory):
    """Real params with a two-cluster modality model that calls dark backgrounds fluorescence,
    and segmentation settings that would find nothing: scoring must use the model's recipe."""
    params = copy.deepcopy(default_params)
    params["postprocess"].update(min_object_area=10**6, fg_threshold=0.999)
    no_saturation = modality.log_saturation(0.0)
    modality_model = {"features": modality.FEATURES, "mean": [0.0, 0.0], "scale": [1.0, 1.0],
                      "centroids": [[0.05, no_saturation], [0.8, no_saturation]],
                      "names": ["fluorescence", "brightfield"]}
    path = tmp_path_factory.mktemp("modality") / "modality_model.json"
    path.write_text(json.dumps(modality_model))
    params["score"]["modality_model"] = str(path)
    return params


@pytest.fixture
def tracked(registry, monkeypatch):
    monkeypatch.chdir(registry["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root']}/mlflow.db")
    return registry


@pytest.fixture(scope="module")
def mixed(registry, score_params, tmp_path_factory):
    """One run() over four good images of different kinds and a corrupt PNG."""
    folder = tmp_path_factory.mktemp("mixed")
    shapes = _write_good_images(folder)
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really a png" + bytes(range(256)))
    output = tmp_path_factory.mktemp("scored")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(registry["root"])
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root']}/mlflow.db")
        result = score.run(CHAMPION, folder, output, score_params, workers=2)  # the worker processes
    return {"result": result, "output": output, "shapes": shapes, "folder": folder}


def _params_file(path, params) -> str:
    path.write_text(yaml.safe_dump(params))
    return str(path)


# ---- run() -------------------------------------------------------------------------------

def test_good_images_are_scored_and_the_corrupt_one_is_reported(mixed):
    result = mixed["result"]
    assert sorted(result.scored) == sorted(mixed["shapes"])
    assert len(result.failed) == 1
    path, problem = result.failed[0]
    assert path.endswith("corrupt.png") and "decode" in problem
    errors = pd.read_csv(mixed["output"] / "errors.csv")
    assert list(errors.columns) == ["path", "problem"]
    assert errors["path"].str.endswith("corrupt.png").tolist() == [True]


def test_labels_and_overlays_have_the_image_size(mixed):
    for image_id, shape in mixed["shapes"].items():
        labels = io.read_image(mixed["output"] / "labels" / f"{image_id}.png")
        overlay = io.read_image(mixed["output"] / "overlays" / f"{image_id}.png")
        assert labels.dtype == np.uint16 and labels.shape == shape
        assert overlay.dtype == np.uint8 and overlay.shape == (*shape, 3)
        assert labels.max() == DISKS  # every disk found, as one nucleus each
    assert not (mixed["output"] / "labels" / "corrupt.png").exists()


def test_submission_rle_decodes_to_the_label_maps(mixed):
    submission = pd.read_csv(mixed["output"] / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels"]
    assert set(submission["ImageId"]) == set(mixed["shapes"])
    for image_id, rows in submission.groupby("ImageId"):
        labels = io.read_image(mixed["output"] / "labels" / f"{image_id}.png")
        decoded = [rle.rle_decode(code, labels.shape) for code in rows["EncodedPixels"]]
        expected = [labels == k for k in range(1, labels.max() + 1)]
        assert len(decoded) == len(expected)
        assert all(np.array_equal(d, e) for d, e in zip(decoded, expected))


def test_counts_table(mixed, tracked):
    counts = pd.read_csv(mixed["output"] / "counts.csv")
    assert list(counts.columns) == ["ImageId", "nuclei", "mean_area_px", "modality", "diameter_px", "scale"]
    assert set(counts["ImageId"]) == set(mixed["shapes"])
    assert (counts["nuclei"] == DISKS).all()
    assert counts["mean_area_px"].between(80, 150).all()  # radius-6 disks: ~113 px
    assert (counts["modality"] == "fluorescence").all()
    assert counts["diameter_px"].between(10, 14.5).all()  # 12 px across
    _, recipe, _ = model_uris.load_model(CHAMPION)  # below its band: enlarged to the training size
    np.testing.assert_allclose(counts["scale"], recipe.nucleus_diameter / counts["diameter_px"], rtol=1e-3)


def test_scoring_uses_the_models_recipe_not_params(mixed, tracked, score_params):
    """The registered recipe (A) finds every disk; the params (B) would find none."""
    from nucseg.core.segment import Recipe, segment

    network, recipe, _ = model_uris.load_model(CHAMPION)
    assert recipe.min_object_area != score_params["postprocess"]["min_object_area"]
    image = io.read_image(mixed["folder"] / "grey8.png")
    assert segment(network, image, Recipe.from_params(score_params))[0].max() == 0  # B: nothing
    assert (pd.read_csv(mixed["output"] / "counts.csv")["nuclei"] == DISKS).all()  # A: every disk


def test_measurements_table(mixed):
    table = pd.read_csv(mixed["output"] / "measurements.csv")
    assert list(table.columns) == ["ImageId", "label", "centroid_row", "centroid_col", "area", "perimeter",
                                   "eccentricity", "solidity", "mean_intensity", "integrated_intensity"]
    assert table.groupby("ImageId").size().to_dict() == {image_id: DISKS for image_id in mixed["shapes"]}
    assert table["area"].between(80, 150).all() and (table["solidity"] > 0.9).all()
    grey16 = table[table["ImageId"] == "grey16"]
    assert grey16["mean_intensity"].between(30000, 40001).all()  # the 16-bit image's own scale


def test_geojson_outlines_on_request(tracked, score_params, tmp_path):
    _write_good_images(tmp_path / "in")
    score.run(CHAMPION, tmp_path / "in", tmp_path / "out", score_params, geojson=True)
    outlines = json.loads((tmp_path / "out" / "outlines" / "grey8.geojson").read_text())
    assert outlines["type"] == "FeatureCollection" and len(outlines["features"]) == DISKS


@pytest.mark.slow
def test_spark_engine_writes_what_the_local_engine_writes(mixed, tracked, score_params, tmp_path):
    result = score.run(CHAMPION, mixed["folder"], tmp_path / "spark", score_params, engine="spark", master="local[2]")
    assert sorted(result.scored) == sorted(mixed["result"].scored)
    assert [Path(path).name for path, _ in result.failed] == ["corrupt.png"]
    for table in ("submission.csv", "counts.csv", "measurements.csv"):
        assert (tmp_path / "spark" / table).read_text() == (mixed["output"] / table).read_text(), table
    for image_id in mixed["shapes"]:
        assert (tmp_path / "spark" / "labels" / f"{image_id}.png").read_bytes() == \
            (mixed["output"] / "labels" / f"{image_id}.png").read_bytes()


def test_one_process_writes_what_the_worker_processes_write(mixed, tracked, score_params, tmp_path):
    result = score.run(CHAMPION, mixed["folder"], tmp_path / "one", score_params, workers=1)
    assert result.scored == mixed["result"].scored  # the input's order, whichever worker finished first
    assert [Path(path).name for path, _ in result.failed] == ["corrupt.png"]
    for table in ("submission.csv", "counts.csv", "measurements.csv", "errors.csv"):
        assert (tmp_path / "one" / table).read_text() == (mixed["output"] / table).read_text(), table
    for image_id in mixed["shapes"]:
        assert (tmp_path / "one" / "labels" / f"{image_id}.png").read_bytes() == \
            (mixed["output"] / "labels" / f"{image_id}.png").read_bytes()


def test_a_version_the_workers_cannot_load_is_one_model_unavailable(tracked, score_params, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    broken = client.create_model_version("nucseg-unet", source=str(tmp_path / "no-such-model"))
    client.set_registered_model_alias("nucseg-unet", "broken", broken.version)
    _write_good_images(tmp_path / "in")
    try:
        with pytest.raises(model_uris.ModelUnavailable, match=rf"models:/nucseg-unet/{broken.version}"):
            score.run("models:/nucseg-unet@broken", tmp_path / "in", tmp_path / "out", score_params, workers=2)
    finally:
        client.delete_registered_model_alias("nucseg-unet", "broken")
        client.delete_model_version("nucseg-unet", broken.version)
    assert not (tmp_path / "out" / "labels").exists()


def test_model_record_names_the_registered_version(mixed, registry):
    record = json.loads((mixed["output"] / "model.json").read_text())
    assert record["model_uri"] == CHAMPION
    assert (record["name"], record["version"], record["run_id"]) == (
        config.REGISTERED_MODEL, registry["version"], registry["run_id"])


def test_dsb_layout_and_an_image_without_nuclei(tracked, score_params, tmp_path):
    params = copy.deepcopy(score_params)
    params["score"]["modality_model"] = str(tmp_path / "absent.json")
    for image_id, image in {"dark": np.zeros((48, 48), np.uint8), "nuclei": _grey(48, 48, 0, 255)}.items():
        (tmp_path / "in" / image_id / "images").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "in" / image_id / "images" / f"{image_id}.png"), image)
    result = score.run(CHAMPION, tmp_path / "in", tmp_path / "out", params)
    assert result.scored == ["dark", "nuclei"] and result.failed == []
    submission = pd.read_csv(tmp_path / "out" / "submission.csv", keep_default_na=False)
    assert submission[submission["ImageId"] == "dark"]["EncodedPixels"].tolist() == [""]
    assert (submission["ImageId"] == "nuclei").sum() == DISKS
    counts = pd.read_csv(tmp_path / "out" / "counts.csv").set_index("ImageId")
    assert counts.loc["dark", "nuclei"] == 0 and counts.loc["dark", "mean_area_px"] == 0
    assert (counts["modality"] == "unknown").all()
    assert not (tmp_path / "out" / "errors.csv").exists()


def test_missing_input_folder_is_named(tracked, score_params, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        score.run(CHAMPION, tmp_path / "nowhere", tmp_path / "out", score_params)


def test_unset_alias_is_a_clear_model_unavailable(tracked, score_params, tmp_path):
    _write_good_images(tmp_path / "in")
    with pytest.raises(model_uris.ModelUnavailable, match=r"models:/nucseg-unet@nobody.*dvc repro promote"):
        score.run("models:/nucseg-unet@nobody", tmp_path / "in", tmp_path / "out", score_params)


# ---- CLI ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_score_exits_1_naming_the_bad_file_and_0_when_all_are_good(tracked, score_params, tmp_path):
    params_file = _params_file(tmp_path / "params.yaml", score_params)
    _write_good_images(tmp_path / "good")
    ok = CliRunner().invoke(app, ["score", "--input", str(tmp_path / "good"), "--output", str(tmp_path / "out"),
                                  "--params", params_file])
    assert ok.exit_code == 0, ok.output
    assert "scored 4 image(s)" in ok.output
    (tmp_path / "good" / "broken.png").write_bytes(b"garbage bytes, not an image")
    bad = CliRunner().invoke(app, ["score", "--input", str(tmp_path / "good"), "--output", str(tmp_path / "out"),
                                   "--params", params_file])
    assert bad.exit_code == 1
    assert "broken.png" in bad.output and "Traceback" not in bad.output
    assert "broken.png" in (tmp_path / "out" / "errors.csv").read_text()


def test_cli_quality_levels_are_recorded_and_an_unknown_one_is_refused_by_name(tracked, score_params, tmp_path):
    params_file = _params_file(tmp_path / "params.yaml", score_params)
    _write_good_images(tmp_path / "in")
    fast = CliRunner().invoke(app, ["score", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                    "--quality", "fast", "--params", params_file])
    assert fast.exit_code == 0, fast.output
    assert json.loads((tmp_path / "out" / "model.json").read_text())["quality"] == "fast"
    for command in (["score", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "never")],
                    ["predict", str(tmp_path / "in" / "grey8.png"), "--output", str(tmp_path / "never")]):
        refused = CliRunner().invoke(app, [*command, "--quality", "fastest", "--params", params_file])
        assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)
        assert "unknown quality level 'fastest': choose one of fast, default, best" in refused.output
        assert "Traceback" not in refused.output and not (tmp_path / "never").exists()


def test_cli_predict_prints_the_count(tracked, score_params, tmp_path):
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), _grey(60, 60, 5, 250))
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(image), "--output", str(out),
                                      "--params", _params_file(tmp_path / "params.yaml", score_params)])
    assert result.exit_code == 0, result.output
    assert f"{DISKS} nuclei" in result.output
    assert io.read_image(out / "one_labels.png").dtype == np.uint16
    assert io.read_image(out / "one_overlay.png").shape == (60, 60, 3)


def test_cli_without_a_registered_model_fails_cleanly(score_params, tmp_path, monkeypatch):
    from nucseg.mlops import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/empty.db")
    tracking.setup()  # a store, but nothing registered in it
    _write_good_images(tmp_path / "in")
    result = CliRunner().invoke(app, ["score", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                      "--params", _params_file(tmp_path / "params.yaml", score_params)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert CHAMPION in result.output and "dvc repro promote" in result.output
    assert "Traceback" not in result.output
