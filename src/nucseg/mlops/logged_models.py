"""Keras models and live training curves in MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import nucseg.config  # noqa: F401 - backend and log-level defaults must be set before keras loads
import keras

from nucseg.config import get_logger

log = get_logger("nucseg.mlflow")


class MlflowLive(keras.callbacks.Callback):
    """Per-epoch metrics to the active MLflow run, so the UI shows curves while it trains.

    A tracking server that stops answering does not stop training: an epoch's metrics wait in
    `pending` and go out with the next epoch once the server is back (the warning names it);
    `backfill` sends, from the training history, what is still missing at the end, including
    epochs of an earlier session that crashed before they were sent."""

    def __init__(self):
        super().__init__()
        self.pending: list[tuple[int, dict[str, float]]] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.pending.append((epoch, {k: float(v) for k, v in logs.items()}))
        self.flush()

    def flush(self) -> bool:
        """Send the pending epochs in order; False (and a warning) if the server does not take them."""
        import mlflow

        was_waiting = len(self.pending) > 1
        try:
            while self.pending:
                step, metrics = self.pending[0]
                mlflow.log_metrics(metrics, step=step)
                self.pending.pop(0)
        except Exception as err:  # noqa: BLE001 - any failure to reach the store: keep the metrics, train on
            log.warning("MLflow tracking server %s did not take the metrics of epoch %d (%s); %d epoch(s) kept "
                        "and sent once it answers, training goes on", mlflow.get_tracking_uri(), self.pending[0][0] + 1,
                        type(err).__name__, len(self.pending))
            return False
        if was_waiting:
            log.info("MLflow tracking server %s answers again: the kept epochs were sent", mlflow.get_tracking_uri())
        return True

    def backfill(self, run_id: str, history) -> None:
        """Log every epoch of `history` (a per-epoch table) that run `run_id` lacks, then check
        nothing is pending; raises `TrackingUnavailable` naming the server if it is still down."""
        import mlflow

        from nucseg.mlops.tracking import TrackingUnavailable

        self.pending.clear()
        try:
            logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")}
        except Exception as err:  # noqa: BLE001
            raise TrackingUnavailable(
                f"MLflow tracking server {mlflow.get_tracking_uri()} is not reachable ({type(err).__name__}); the "
                "trained epochs are saved: rerun the stage when it is back and it finishes from them") from err
        for row in history.to_dict("records"):
            if int(row["epoch"]) not in logged:
                self.pending.append((int(row["epoch"]), {k: float(v) for k, v in row.items() if k != "epoch"}))
        if self.pending and not self.flush():
            raise TrackingUnavailable(f"MLflow tracking server {mlflow.get_tracking_uri()} stopped answering; the "
                                      "trained epochs are saved: rerun the stage when it is back")


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


def log_recipe(recipe, thresholds, chosen: dict[str, float]) -> None:
    """A network's recipe (`calibration.chosen_recipe`) into the active run: val DSB as metrics,
    each setting as a `recipe.` tag, the recipe and every threshold candidate as artifacts."""
    import tempfile

    import mlflow

    mlflow.log_metrics(chosen)
    mlflow.set_tags({f"recipe.{key}": str(value) for key, value in recipe.to_dict().items()})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "recipe.json").write_text(recipe.to_json())
        thresholds.round(5).to_csv(Path(tmp) / "thresholds.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "recipe.json"))
        mlflow.log_artifact(str(Path(tmp) / "thresholds.csv"), "evaluation")


def log_training_curves(model_dir: Path) -> None:
    """`training.write_history`'s table and figure into the active run's `plots`."""
    import mlflow

    mlflow.log_artifact(str(model_dir / "training_curves.png"), "plots")
    mlflow.log_artifact(str(model_dir / "history.csv"), "plots")
