"""Project paths, parameters and environment defaults shared by every stage."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

# Quiet, offline-friendly defaults; set before TensorFlow, MLflow or DVC are imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# MLflow retries a tracking server that does not answer for minutes (7 tries, doubling waits);
# a training epoch should not wait that long for its metrics: they are kept and sent later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

def find_root(start: Path) -> Path:
    """The project folder: `start` or the nearest folder above it with a `dvc.yaml`, so commands
    run from a subfolder find the project's store; `start` itself outside any project."""
    start = start.resolve()
    return next((folder for folder in (start, *start.parents) if (folder / "dvc.yaml").is_file()), start)


ROOT = Path(os.environ["NUCSEG_ROOT"]).resolve() if os.environ.get("NUCSEG_ROOT") else find_root(Path.cwd())
PARAMS_FILE = "params.yaml"
EXPERIMENT_NAME = "nucseg"
REGISTERED_MODEL = "nucseg-unet"


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path or ROOT / PARAMS_FILE)
    with open(path) as fh:
        return yaml.safe_load(fh)


BACKENDS = ("tensorflow", "jax")


def use_training_backend(params: dict[str, Any]) -> str:
    """Set Keras's backend to `train.backend` before Keras loads, for a stage that trains: JAX
    runs on an accelerator where one is installed (`pip install -e .[accelerator]`), TensorFlow
    (CPU) is the default. Inference stages run ONNX Runtime whatever trained the network."""
    import sys

    backend = params["train"].get("backend", "tensorflow")
    if backend not in BACKENDS:
        raise ValueError(f"train.backend must be one of {BACKENDS}, got {backend!r}")
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
        raise RuntimeError(f"train.backend {backend!r}: Keras is loaded already on {os.environ.get('KERAS_BACKEND')!r}")
    os.environ["KERAS_BACKEND"] = backend
    return backend


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` wins; otherwise the sqlite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def get_logger(name: str) -> logging.Logger:
    """Our loggers speak at INFO; third-party libraries only at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    logger = logging.getLogger(name)
    logger.setLevel(os.environ.get("NUCSEG_LOG_LEVEL", "INFO"))
    return logger
