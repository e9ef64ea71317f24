"""Stage `train`: the untuned U-Net, tracked in MLflow, resumable after an interruption.

Every epoch writes `last.keras` and `state.json`; a rerun after a crash or Ctrl-C reloads them
(optimizer state included), continues at the next epoch with the same data stream, and keeps
logging into the same MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucseg import config, datasets, io, tracking
from nucseg.config import get_logger

log = get_logger("nucseg.train")

import keras  # noqa: E402 - after config has set the backend

from nucseg.augment import AugmentConfig  # noqa: E402
from nucseg.data import CropDataset, load_samples, validation_crops  # noqa: E402
from nucseg.losses import PixelDice, PixelIoU, bce_dice_loss  # noqa: E402
from nucseg.unet import build_unet  # noqa: E402


def build_model(model_cfg: dict[str, Any], train_cfg: dict[str, Any]) -> keras.Model:
    model = build_unet(input_channels=3, output_channels=2, depth=int(model_cfg["depth"]),
                       base_filters=int(model_cfg["base_filters"]), dropout=float(model_cfg["dropout"]),
                       batchnorm=bool(model_cfg["batchnorm"]), encoder=model_cfg.get("encoder", "plain"),
                       encoder_weights=model_cfg.get("encoder_weights") or None)
    compile_model(model, train_cfg)
    return model


def compile_model(model: keras.Model, train_cfg: dict[str, Any]) -> None:
    model.compile(optimizer=keras.optimizers.Adam(float(train_cfg["learning_rate"])),
                  loss=bce_dice_loss(float(train_cfg["bce_weight"]), float(train_cfg["dice_weight"]),
                                     channel_weights=(1.0, float(train_cfg.get("border_loss_weight", 1.0)))),
                  metrics=[PixelIoU(name="iou"), PixelDice(name="dice")])


def split_samples(split_path: str | Path, samples_dir: str | Path) -> tuple[list[dict], list[dict]]:
    split = pd.read_csv(split_path)
    paths = {s: [Path(samples_dir) / f"{i}.npz" for i in split.loc[split["split"] == s, "id"]] for s in ("train", "val")}
    return (load_samples(paths["train"], desc="train: loading training samples"),
            load_samples(paths["val"], desc="train: loading validation samples"))


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly once `minutes` of wall-clock time are spent (after a whole epoch)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.deadline = time.monotonic() + 60 * minutes
        self.exhausted = False

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() > self.deadline:
            self.exhausted = True
            self.model.stop_training = True
            log.info("time budget spent after epoch %d; stopping", epoch + 1)


class MlflowLive(keras.callbacks.Callback):
    """Per-epoch metrics to the active MLflow run, so the UI shows curves while it trains."""

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


class EpochState(keras.callbacks.Callback):
    """`last.keras` + `state.json` after every epoch: what a rerun needs to resume."""

    def __init__(self, model_dir: Path, run_id: str):
        super().__init__()
        self.model_dir, self.run_id = model_dir, run_id

    def on_epoch_end(self, epoch, logs=None):
        tmp = self.model_dir / ".last.tmp.keras"
        self.model.save(tmp)
        tmp.replace(self.model_dir / "last.keras")
        io.write_json(self.model_dir / "state.json", {"epoch": epoch, "run_id": self.run_id})


def curves_figure(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, ("loss", "iou", "dice")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(history["epoch"] + 1, history[prefix + metric], style, label=prefix + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fit(model: keras.Model, train: list[dict], val: list[dict], params: dict[str, Any], model_dir: Path,
        run_id: str, initial_epoch: int = 0, epochs: int | None = None, extra_callbacks=()) -> pd.DataFrame:
    """Train with the pipeline's callbacks; returns the per-epoch history."""
    cfg = params["train"]
    dataset = CropDataset(train, batch_size=int(cfg["batch_size"]), crop_size=int(cfg["crop_size"]),
                          steps_per_epoch=int(cfg["steps_per_epoch"]), augment=AugmentConfig.from_params(params["augment"]),
                          seed=int(cfg["seed"]), workers=int(cfg["workers"]))
    dataset.set_epoch(initial_epoch)
    x_val, y_val = validation_crops(val, n=int(cfg["val_crops"]), crop_size=int(cfg["crop_size"]), seed=int(cfg["seed"]))
    history_csv = model_dir / "history.csv"
    if initial_epoch > 0 and history_csv.exists():  # drop rows of epochs that did not finish
        previous = pd.read_csv(history_csv)
        io.write_csv(history_csv, previous[previous["epoch"] < initial_epoch])
    callbacks = [
        keras.callbacks.ModelCheckpoint(model_dir / "best.keras", monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(cfg["early_stopping_patience"])),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=float(cfg["reduce_lr_factor"]),
                                          patience=int(cfg["reduce_lr_patience"]), min_lr=1e-5),
        keras.callbacks.CSVLogger(history_csv, append=initial_epoch > 0),
        TimeBudget(float(cfg["max_minutes"])),
        MlflowLive(),
        EpochState(model_dir, run_id),
        *extra_callbacks,
    ]
    model.fit(dataset, validation_data=(x_val, y_val), batch_size=int(cfg["batch_size"]),
              epochs=int(epochs or cfg["epochs"]), initial_epoch=initial_epoch, callbacks=callbacks, verbose=2)
    return pd.read_csv(history_csv)


def run(params: dict[str, Any], split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", model_dir: str | Path = "models/untuned",
        metrics_path: str | Path = "reports/train_metrics.json",
        history_path: str | Path = "reports/train_history.csv") -> dict[str, Any]:
    import mlflow

    cfg = params["train"]
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(int(cfg["seed"]))
    tracking.setup()
    train, val = split_samples(split_path, samples_dir)

    state_file = model_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() and (model_dir / "last.keras").exists() else None
    if state:
        model = keras.saving.load_model(model_dir / "last.keras")
        initial_epoch = state["epoch"] + 1
        log.info("resuming MLflow run %s at epoch %d from %s", state["run_id"], initial_epoch + 1, model_dir / "last.keras")
    else:
        model, initial_epoch = build_model(params["model"], cfg), 0
    started = time.monotonic()
    with mlflow.start_run(run_id=state["run_id"] if state else None, run_name=None if state else "untuned") as active:
        if not state:
            mlflow.set_tags({"stage": "train", "model_kind": "untuned", **tracking.lineage_tags()})
            mlflow.log_params(tracking.flatten({k: params[k] for k in ("model", "train", "augment", "prepare")}))
            datasets.log_split_inputs(split_path, ("train", "val"), params)
        history = fit(model, train, val, params, model_dir, active.info.run_id, initial_epoch=initial_epoch)
        if (model_dir / "best.keras").exists():
            model = keras.saving.load_model(model_dir / "best.keras")
        model.save(model_dir / "model.keras")
        figure = model_dir / "training_curves.png"
        curves_figure(history, figure)
        mlflow.log_artifact(str(figure), "plots")
        mlflow.log_artifact(str(model_dir / "history.csv"), "plots")
        model_uri = log_keras_model(model)
        best = history.loc[history["val_loss"].idxmin()]
        metrics = {"epochs": int(len(history)), "best_epoch": int(best["epoch"]) + 1,
                   "val_loss": round(float(best["val_loss"]), 5), "val_iou": round(float(best["val_iou"]), 5),
                   "val_dice": round(float(best["val_dice"]), 5),
                   "minutes_this_session": round((time.monotonic() - started) / 60, 2),
                   "crops_per_second": round((len(history) - initial_epoch) * int(cfg["steps_per_epoch"])
                                             * int(cfg["batch_size"]) / max(time.monotonic() - started, 1e-9), 2)}
        io.write_json(model_dir / "run.json", {"run_id": active.info.run_id, "model_uri": model_uri})
    io.write_json(metrics_path, metrics)
    io.write_csv(history_path, history)
    (model_dir / "last.keras").unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    log.info("trained: %s", metrics)
    return metrics


def log_keras_model(model: keras.Model, name: str = "model") -> str:
    """Log an uncompiled copy (loading it then needs none of our custom losses/metrics) with a
    signature that admits any image size; returns the logged model's URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    plain = keras.Model(model.inputs, model.outputs)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3), "image")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 2), "maps")]))
    return mlflow.keras.log_model(plain, name=name, signature=signature,
                                  pip_requirements=serving_requirements()).model_uri


def serving_requirements() -> list[str]:
    """Pins of what loading the model needs; stating them skips MLflow's slow inference of them."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "jax", "numpy"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins
