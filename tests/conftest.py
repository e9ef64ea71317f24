"""Shared fixtures: the project root, default params, a small slice of the real data."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The stages' maps cache (core.maps_cache) in a folder of the tests' own, not the project's.
_MAPS_CACHE = tempfile.TemporaryDirectory(prefix="nucseg-test-maps-")
os.environ.setdefault("NUCSEG_MAPS_CACHE", _MAPS_CACHE.name)

ROOT = Path(__file__).resolve().parents[1]
REAL_TRAIN = ROOT / "data" / "stage1_train"
REAL_TEST = ROOT / "data" / "stage1_test"
BIN = Path(sys.executable).parent
N_TRAIN, N_TEST = 8, 3  # real images in the end-to-end pipeline projects


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
    params["train"].update(crop_size=32, batch_size=2, steps_per_epoch=2, epochs=2, val_crops=2, workers=1)
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


def small_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["modality"]["examples_per_cluster"] = 2
    params["split"].update(val_fraction=0.25, test_fraction=0.25)
    params["model"].update(depth=2, base_filters=4)
    params["train"].update(crop_size=64, batch_size=2, steps_per_epoch=2, epochs=1, val_crops=2, workers=1)
    params["inference"].update(tile_size=256, tile_overlap=32)
    params["evaluate"].update(overlays_per_modality=1, shifts=["x2", "darker"])
    params["unseen"].update(epochs=1, folds={"histology": ["histology"], "brightfield": ["brightfield"],
                                             "fluorescence": ["fluorescence"]})
    params["tune"].update(max_epochs=2, hyperband_factor=2, steps_per_epoch=1, max_minutes=1,
                          space={**params["tune"]["space"], "base_filters": [4], "depth": [2]})
    return params


def sh(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def tiny_tune_params(**tune_overrides) -> dict:
    """Real params with a search of seconds: one-level U-Nets of 4 filters, one-step epochs."""
    from nucseg.config import load_params

    params = load_params(ROOT / "params.yaml")
    params["model"]["batchnorm"] = False
    params["train"].update(crop_size=32, batch_size=2, steps_per_epoch=2, val_crops=2, workers=1, max_minutes=5)
    params["tune"].update({"steps_per_epoch": 2, "max_minutes": 10, "retrain": False, **tune_overrides})
    params["tune"]["space"] = {"base_filters": [4], "depth": [1], "dropout": [0.0, 0.2], "learning_rate": [0.001, 0.01],
                               "bce_weight": [0.5, 1.5], "dice_weight": [0.5, 1.5]}
    return params


def pipeline_env() -> dict:
    """This process's environment for a subprocess, without the MLflow run or experiment that
    earlier tests in this process may have left in it."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    for leftover in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leftover, None)
    return env


def build_project(project: Path, env: dict) -> None:
    """A temporary project ready for `dvc repro`: the repo's pipeline files and code, a few real
    images added with DVC, tiny params (seconds per stage)."""
    require_real_data()
    for name in ("dvc.yaml", "data.dvc", "MLproject", "conda.yaml"):
        shutil.copy(ROOT / name, project / name)
    (project / ".gitignore").write_text("mlflow.db\nmlruns/\nmlartifacts/\n*.log\n")
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (project / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    for source, count in ((REAL_TRAIN, N_TRAIN), (REAL_TEST, N_TEST)):
        for sample in sorted(source.iterdir())[:count]:
            shutil.copytree(sample, project / "data" / source.name / sample.name)
    sh("git", "init", "-q", cwd=project, env=env)
    sh("dvc", "init", "-q", cwd=project, env=env)
    sh("dvc", "add", "-q", "data", cwd=project, env=env)


# ---- a shared tracking server (tests marked `server`) ----

ROLES = ("reader", "member", "promoter")


@dataclass
class Server:
    url: str
    database_uri: str  # for psycopg
    artifacts: Path
    log: Path
    home: Path  # the script's secrets
    passwords: dict[str, str]  # admin and one user per role, named after it

    def env(self, user: str | None) -> dict:
        """A subprocess environment that talks to this server as `user` (None: anonymous)."""
        env = {**pipeline_env(), "MLFLOW_TRACKING_URI": self.url}
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        if user:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=self.passwords[user])
        return env


def owner_only_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """`scripts/tracking-server` with a database and role of its own (created, then dropped), users on:
    the admin's password from an owner-only file, one user per role made with `nucseg team add`."""
    import secrets

    folder = tmp_path_factory.mktemp("server")
    port, name = free_port(), f"nucseg_test_{os.getpid()}"
    admin_password = secrets.token_urlsafe(16)
    env = {**pipeline_env(), "NUCSEG_DB_NAME": name, "NUCSEG_DB_USER": name,
           "NUCSEG_ADMIN_PASSWORD_FILE": str(owner_only_file(folder / "admin.secret", admin_password)),
           "NUCSEG_SERVER_HOME": str(folder / "home"),
           "NUCSEG_ARTIFACTS": str(folder / "artifacts"), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "2"}
    log = folder / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(ROOT / "scripts" / "tracking-server")], cwd=folder, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", server, log, "scripts/tracking-server (PostgreSQL + mlflow server)", timeout=180)
    sys.__stdout__.write(f"\n{log.read_text()}")  # CI's output shows PostgreSQL and the server starting
    db_password = (folder / "home" / "db-password").read_text().strip()
    running = Server(url, f"postgresql://{name}:{db_password}@127.0.0.1:5432/{name}", folder / "artifacts", log,
                     folder / "home", {"admin": admin_password})
    for role in ROLES:
        running.passwords[role] = secrets.token_urlsafe(12)
        secret = owner_only_file(folder / f"{role}.secret", running.passwords[role])
        sh(str(BIN / "nucseg"), "team", "add", role, "--role", role, "--password-file", str(secret), cwd=folder,
           env=running.env("admin"))
    yield running
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
    for drop in ("dropdb", "dropuser"):
        subprocess.run(["runuser", "-u", "postgres", "--", drop, "--if-exists", name], check=False)


@pytest.fixture
def as_admin(tracking_server, monkeypatch) -> Server:
    """The tracking server, with this test process talking to it as its admin."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.passwords["admin"])
    return tracking_server


def query(server: Server, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(server.database_uri) as connection:
        return connection.execute(sql).fetchall()
