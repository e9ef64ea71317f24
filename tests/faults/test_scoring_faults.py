"""Scoring faults: an image the model cannot take, a disk that fills up mid-run, a command run
outside the project. Real MLflow store, real subprocesses, a real file-size limit (the kernel
refuses the write exactly as it does on a full disk: OSError from write)."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.draw import disk

from conftest import BIN
from nucseg import config, io
from nucseg.core import image_outputs
from nucseg.stages import score

CHAMPION = "models:/nucseg-unet@champion"


def brightness_network(fixed_size: int | None = None):
    """foreground = sigmoid(20 (mean intensity - 0.5)), border = 0, through 1x1 convolutions.
    With `fixed_size`, a final reshape only fits images padded to that size: a model with a bug
    for other sizes, whose error is not one of ours."""
    import keras

    inputs = keras.Input((None, None, 3))
    maps = keras.layers.Conv2D(2, 1, activation="sigmoid", name="maps")(inputs)
    if fixed_size:
        maps = keras.layers.Reshape((fixed_size, fixed_size, 2))(maps)
    model = keras.Model(inputs, maps)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = 20 / 3
    model.get_layer("maps").set_weights([kernel, np.array([-10.0, -10.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project folder (dvc.yaml, mlflow.db) whose registry holds version 1, any image size
    (`champion`), and version 2, only 64x64 (`fixed`)."""
    import mlflow

    from nucseg.core.segment import Recipe
    from nucseg.mlops import tracking
    from nucseg.mlops.segmenter_model import log_segmenter

    root = tmp_path_factory.mktemp("project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        tracking.setup()
        client = mlflow.MlflowClient()
        for alias, network in (("champion", brightness_network()), ("fixed", brightness_network(fixed_size=64))):
            with mlflow.start_run():
                uri = log_segmenter(network, Recipe(min_object_area=0))
            version = mlflow.register_model(uri, config.REGISTERED_MODEL).version
            client.set_registered_model_alias(config.REGISTERED_MODEL, alias, version)
    return root


def disks(size: int) -> np.ndarray:
    image = np.full((size, size), 20, np.uint8)
    for center in ((16, 16), (40, 44)):
        image[disk(center, 8, shape=image.shape)] = 220
    return image


def noisy(size: int, seed: int = 0) -> np.ndarray:
    """Random pixels: its PNGs (overlay) are as large as PNGs get."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def environment(store: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}


@pytest.mark.slow
def test_an_image_the_model_fails_on_is_reported_and_the_rest_scored(store, tmp_path, monkeypatch, default_params):
    monkeypatch.chdir(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a_small.png"), disks(64))
    cv2.imwrite(str(images / "b_large.png"), disks(100))  # padded to 128x128: the reshape fails
    cv2.imwrite(str(images / "c_small.png"), disks(48))  # padded to 64x64: fine
    result = score.run("models:/nucseg-unet@fixed", images, tmp_path / "out", default_params)
    assert result.scored == ["a_small", "c_small"]
    [(path, problem)] = result.failed
    assert path.endswith("b_large.png") and problem  # named, with the error's type and message
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "b_large.png" in errors and "submission.csv" not in errors
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["a_small.png", "c_small.png"]


def limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_disk_full_during_score_leaves_no_stale_table_and_no_half_file(store, tmp_path, monkeypatch, default_params):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), disks(64))
    cv2.imwrite(str(images / "b.png"), noisy(256))
    cv2.imwrite(str(images / "c.png"), disks(64))
    with monkeypatch.context() as mp:
        mp.chdir(store)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
        score.run(CHAMPION, images, out, default_params)
    assert (out / "submission.csv").exists() and (out / "overlays" / "b.png").stat().st_size > 100_000
    (out / "overlays" / "b.png").unlink()

    # Again into the same folder, now with files limited to 60 kB: b's outputs cannot be written.
    run = subprocess.run([str(BIN / "nucseg"), "score", "--input", str(images), "--output", str(out)],
                         cwd=store, env=environment(store), capture_output=True, text=True, timeout=300,
                         preexec_fn=limit_file_size(60_000))
    assert run.returncode == 1, run.stderr[-3000:]
    assert "/b.png" in run.stderr and "cannot write" in run.stderr and "Traceback" not in run.stderr
    assert not any((out / table).exists() for table in image_outputs.TABLES)  # no table describing other labels
    assert not (out / "overlays" / "b.png").exists()
    assert not list(out.rglob("*.tmp"))
    for png in out.rglob("*.png"):
        io.read_image(png)  # every file under its final name is complete


def test_score_outside_any_project_says_how_and_creates_no_store(store, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), disks(64))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = environment(store)
    env.pop("MLFLOW_TRACKING_URI")
    env.pop("NUCSEG_ROOT", None)
    run = subprocess.run([str(BIN / "nucseg"), "score", "--input", str(images), "--output", str(tmp_path / "out")],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "MLFLOW_TRACKING_URI" in run.stderr and "Traceback" not in run.stderr
    assert list(elsewhere.iterdir()) == []  # no empty mlflow.db left behind

    below = store / "notebooks" / "today"  # a folder below the project finds the project's store
    below.mkdir(parents=True)
    run = subprocess.run([str(BIN / "nucseg"), "score", "--input", str(images), "--output", str(tmp_path / "out")],
                         cwd=below, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "submission.csv").exists() and not (below / "mlflow.db").exists()
