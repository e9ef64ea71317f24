"""Keras models and live training curves in MLflow."""

from __future__ import annotations

import numpy as np

import nucseg.config  # noqa: F401 - backend and log-level defaults must be set before keras loads
import keras


class MlflowLive(keras.callbacks.Callback):
    """Per-epoch metrics to the active MLflow run, so the UI shows curves while it trains."""

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


def uncompiled(model: keras.Model) -> keras.Model:
    """The same layers and weights without loss, metrics or optimizer: loading it back needs none
    of our custom losses and metrics."""
    return keras.Model(model.inputs, model.outputs)


def log_keras_model(model: keras.Model, name: str = "model") -> str:
    """Log an uncompiled copy (loading it then needs none of our custom losses/metrics) with a
    signature that admits any image size; returns the logged model's URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    plain = uncompiled(model)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3), "image")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 2), "maps")]))
    return mlflow.keras.log_model(plain, name=name, signature=signature,
                                  pip_requirements=serving_requirements()).model_uri


def serving_requirements(onnx: bool = False) -> list[str]:
    """Pins of what loading the model needs; stating them skips MLflow's slow inference of them."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    packages = ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "jax", "numpy", "opencv-python-headless",
                "scikit-image", "scipy", "pandas", "tifffile", "pyyaml") + (("onnxruntime",) if onnx else ())
    for package in packages:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins
