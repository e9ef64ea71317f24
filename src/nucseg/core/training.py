"""Training machinery shared by the `train` and `tune` stages: model, callbacks, the fit loop.

Every epoch writes `last.keras` and `state.json`; a rerun after a crash or Ctrl-C reloads them
(optimizer state included) and continues at the next epoch with the same data stream.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger

log = get_logger("nucseg.train")

import keras  # noqa: E402 - after config has set the backend

from nucseg.core.augment import AugmentConfig  # noqa: E402
from nucseg.core.data import CropDataset, load_samples, validation_crops  # noqa: E402
from nucseg.core.losses import PixelDice, PixelIoU, bce_dice_loss  # noqa: E402
from nucseg.core.unet import build_unet  # noqa: E402


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
        *extra_callbacks,  # before the epoch state: an epoch counts as done only once they ran
        EpochState(model_dir, run_id),
    ]
    model.fit(dataset, validation_data=(x_val, y_val), batch_size=int(cfg["batch_size"]),
              epochs=int(epochs or cfg["epochs"]), initial_epoch=initial_epoch, callbacks=callbacks, verbose=2)
    return pd.read_csv(history_csv)
