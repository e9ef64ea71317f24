"""Shared fixtures: the project root, default params, a small slice of the real data."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
REAL_TRAIN = ROOT / "data" / "stage1_train"
REAL_TEST = ROOT / "data" / "stage1_test"


@pytest.fixture(scope="session")
def default_params() -> dict:
    from nucseg.config import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture
def params(default_params) -> dict:
    return copy.deepcopy(default_params)


def require_real_data() -> None:
    if not REAL_TRAIN.is_dir():
        pytest.fail(f"{REAL_TRAIN} is missing: run `dvc pull` first (the README's test command does)")


@pytest.fixture
def real_slice(tmp_path) -> Path:
    """A DSB-layout copy of a few real training images (with masks) to break at will."""
    require_real_data()
    target = tmp_path / "stage1_train"
    for sample in sorted(REAL_TRAIN.iterdir())[:4]:
        shutil.copytree(sample, target / sample.name)
    return target


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A real, empty MLflow sqlite store for this test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def write_synthetic_prepared(folder: Path, n_images: int = 6, size: int = 64, seed: int = 0) -> Path:
    """Prepared-stage output (npz + split.csv) of bright disks on black, some touching."""
    import numpy as np
    import pandas as pd
    from skimage.draw import disk

    from nucseg import io
    from nucseg.core.targets import targets_from_labels

    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_images):
        labels = np.zeros((size, size), np.uint16)
        for index in range(1, 5):
            rr, cc = disk(tuple(rng.integers(8, size - 8, 2)), int(rng.integers(4, 8)), shape=labels.shape)
            labels[rr, cc] = index
        image = np.where(labels[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, axis=2)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        io.write_npz(folder / "prepared" / f"img{k}.npz", image=image, labels=labels,
                     target=targets_from_labels(labels))
        rows.append({"id": f"img{k}", "group": f"img{k}", "split": ("val", "test", "train")[k % 3],
                     "modality": "fluorescence",
                     "height": size, "width": size, "n_nuclei": int(labels.max())})
    pd.DataFrame(rows).to_csv(folder / "split.csv", index=False)
    return folder


@pytest.fixture
def synthetic_prepared(tmp_path) -> Path:
    return write_synthetic_prepared(tmp_path / "synthetic")


@pytest.fixture
def tiny_params(params) -> dict:
    """Defaults shrunk to seconds: tiny U-Net, tiny crops, two short epochs."""
    params["model"].update(depth=2, base_filters=4)
    params["train"].update(crop_size=32, batch_size=2, steps_per_epoch=2, epochs=2, val_crops=2, workers=1,
                           max_minutes=5)
    params["inference"].update(tile_size=64, tile_overlap=16)
    return params


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server, log_path: Path, what: str, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; stop `server` and fail with its log's tail otherwise."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.5)
    server.terminate()
    pytest.fail(f"{what} did not start: {Path(log_path).read_text()[-2000:]}")
