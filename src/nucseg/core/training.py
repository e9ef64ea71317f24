"""Training machinery shared by the `train` and `tune` stages: model, callbacks, the fit loop.

Every epoch writes `last.keras` and `state.json` into a work folder; a rerun after a crash or
Ctrl-C reloads them (optimizer state included) and continues at the next epoch with the same
data stream, and with the callbacks where they were (best val_loss so far, epochs without
improvement), so checkpointing, early stopping and the learning-rate schedule behave as in an
uninterrupted run. A state saved on other data, split, params or code is not resumed: training
starts afresh and says which changed (`core.resume`).

The budget is work: `train.epochs` of `train.steps_per_epoch` batches. `train.max_minutes` > 0
adds an opt-in clock cap; a run it stops is labelled (`fit` returns why), because another
machine would have trained a different model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger

log = get_logger("nucseg.train")

import keras  # noqa: E402 - after config has set the backend

from nucseg.core import resume  # noqa: E402
from nucseg.core.data import CropDataset, validation_crops_from_params  # noqa: E402
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
    """`train.jit_compile`: "auto" is Keras's choice (XLA on accelerators, not on a CPU alone)."""
    jit = train_cfg["jit_compile"]
    model.compile(optimizer=keras.optimizers.Adam(float(train_cfg["learning_rate"])),
                  loss=bce_dice_loss(float(train_cfg["bce_weight"]), float(train_cfg["dice_weight"]),
                                     channel_weights=(1.0, float(train_cfg["border_loss_weight"]))),
                  metrics=[PixelIoU(name="iou"), PixelDice(name="dice")],
                  jit_compile=jit if jit == "auto" else bool(jit))


class ClockCap(keras.callbacks.Callback):
    """The opt-in clock cap: stops training cleanly once `minutes` (> 0) of wall-clock time are
    spent, after a whole epoch; `cut` then says so in words."""

    def __init__(self, minutes: float, planned_epochs: int):
        super().__init__()
        self.minutes, self.planned_epochs = minutes, planned_epochs
        self.deadline = time.monotonic() + 60 * minutes
        self.cut = ""

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 < self.planned_epochs and time.monotonic() > self.deadline:
            self.cut = (f"the clock cap train.max_minutes={self.minutes:g} stopped training after epoch {epoch + 1} "
                        f"of {self.planned_epochs}")
            self.model.stop_training = True
            log.warning("%s: another machine would train a different model (set train.max_minutes: 0)", self.cut)


# Callback attributes that carry progress from epoch to epoch (Keras resets them at train start).
CALLBACK_PROGRESS = {"checkpoint": ("best",), "early_stopping": ("best", "wait", "best_epoch"),
                     "reduce_lr": ("best", "wait", "cooldown_counter")}


# Train keys that change no epoch: a run resumes under other budgets.
BUDGET_KEYS = ("epochs", "max_minutes")


def training_settings(params: dict[str, Any], data_md5: str, split_path: str | Path,
                      stage_file: str | Path) -> dict[str, Any]:
    """What the weights of a training run depend on (`core.resume.settings`)."""
    train = {k: v for k, v in params["train"].items() if k not in BUDGET_KEYS}
    sections = {"model": params["model"], "train": train, "augment": params["augment"], "prepare": params["prepare"]}
    return resume.settings(sections, data_md5, split_path, ("train", "val"), resume.package_code(stage_file))


def load_state(work_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The state to resume from; None to start afresh, after clearing a state saved under
    other settings (and saying which changed)."""
    state_file = work_dir / "state.json"
    if not (state_file.exists() and (work_dir / "last.keras").exists()):
        return None
    state = json.loads(state_file.read_text())
    changed = resume.changes(state.get("settings") or {}, settings)
    if changed:
        log.warning("%s holds a training interrupted after epoch %d on other %s; starting afresh", work_dir,
                    state["epoch"] + 1, ", ".join(changed))
        shutil.rmtree(work_dir)
        return None
    return state


def callback_progress(callbacks: dict[str, keras.callbacks.Callback]) -> dict[str, dict[str, float | int | None]]:
    """The epoch-to-epoch progress of checkpointing, early stopping and the LR schedule, as JSON
    values (numpy scalars as plain numbers)."""
    def plain(value):
        return value.item() if hasattr(value, "item") else value

    return {name: {attr: plain(getattr(callback, attr)) for attr in CALLBACK_PROGRESS[name]}
            for name, callback in callbacks.items()}


def restore_progress(callbacks: dict[str, keras.callbacks.Callback], progress: dict[str, dict[str, Any]]) -> None:
    for name, values in progress.items():
        for attr, value in values.items():
            setattr(callbacks[name], attr, value)


class EpochState(keras.callbacks.Callback):
    """`last.keras` + `state.json` after every epoch: what a rerun needs to resume. Listed after
    the `watched` callbacks, so its `on_train_begin` puts their progress back after Keras reset it."""

    def __init__(self, work_dir: Path, run_id: str, settings: dict[str, Any],
                 watched: dict[str, keras.callbacks.Callback], progress: dict[str, dict[str, float]] | None = None,
                 cap: ClockCap | None = None):
        super().__init__()
        self.work_dir, self.run_id, self.settings, self.watched, self.progress = work_dir, run_id, settings, watched, progress
        self.cap = cap
        self.epoch: int | None = None  # the last epoch saved

    def on_train_begin(self, logs=None):
        if self.progress:
            restore_progress(self.watched, self.progress)

    def on_epoch_end(self, epoch, logs=None):
        tmp = self.work_dir / ".last.tmp.keras"
        self.model.save(tmp)
        tmp.replace(self.work_dir / "last.keras")
        self.epoch = epoch
        self._write(finished=False)

    def on_train_end(self, logs=None):
        if self.epoch is not None:  # training is over (epochs, early stopping or budget): a rerun only finishes up
            self._write(finished=True)

    def _write(self, finished: bool) -> None:
        io.write_json(self.work_dir / "state.json", {"epoch": self.epoch, "run_id": self.run_id, "settings": self.settings,
                                                     "finished": finished, "callbacks": callback_progress(self.watched),
                                                     "budget_cut": self.cap.cut if self.cap else ""})


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


def write_history(model_dir: Path, history: pd.DataFrame) -> None:
    """The per-epoch history beside the model, as a table and as `training_curves.png`."""
    io.write_csv(model_dir / "history.csv", history)
    curves_figure(history, model_dir / "training_curves.png")


def fit(model: keras.Model, train: list[dict], val: list[dict], params: dict[str, Any], work_dir: Path,
        run_id: str, settings: dict[str, Any] | None = None, initial_epoch: int = 0, epochs: int | None = None,
        extra_callbacks=(), state: dict[str, Any] | None = None) -> tuple[pd.DataFrame, str]:
    """Train with the pipeline's callbacks in `work_dir` (best.keras, history.csv, the resume
    state under `settings`); `state` is what `load_state` found. Returns the per-epoch history,
    and why the clock cap stopped it early ("" when the epochs or early stopping did)."""
    cfg = params["train"]
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = CropDataset.from_params(train, params, steps_per_epoch=int(cfg["steps_per_epoch"]))
    dataset.set_epoch(initial_epoch)
    x_val, y_val = validation_crops_from_params(val, params)
    history_csv = work_dir / "history.csv"
    if initial_epoch > 0 and history_csv.exists():  # drop rows of epochs that did not finish
        previous = pd.read_csv(history_csv)
        io.write_csv(history_csv, previous[previous["epoch"] < initial_epoch])
    watched = {
        "checkpoint": keras.callbacks.ModelCheckpoint(work_dir / "best.keras", monitor="val_loss", save_best_only=True),
        "early_stopping": keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(cfg["early_stopping_patience"])),
        "reduce_lr": keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=float(cfg["reduce_lr_factor"]),
                                                       patience=int(cfg["reduce_lr_patience"]),
                                                       min_lr=float(cfg["min_lr"])),
    }
    epochs = int(epochs or cfg["epochs"])
    cap = ClockCap(float(cfg["max_minutes"]), epochs) if float(cfg["max_minutes"]) > 0 else None
    callbacks = [
        *watched.values(),
        keras.callbacks.CSVLogger(history_csv, append=initial_epoch > 0),
        *([cap] if cap else []),
        # The epoch is saved before anything talks to a tracking server, which may be down.
        EpochState(work_dir, run_id, settings or {}, watched, (state or {}).get("callbacks"), cap),
        *extra_callbacks,
    ]
    model.fit(dataset, validation_data=(x_val, y_val), batch_size=int(cfg["batch_size"]),
              epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=2)
    return pd.read_csv(history_csv), cap.cut if cap else ""
