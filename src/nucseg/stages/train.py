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

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.training import build_model, curves_figure, fit, split_samples
from nucseg.mlops import datasets, tracking
from nucseg.mlops.logged_models import MlflowLive, log_keras_model

log = get_logger("nucseg.train")

import keras  # noqa: E402 - after config has set the backend


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
        history = fit(model, train, val, params, model_dir, active.info.run_id, initial_epoch=initial_epoch,
                      extra_callbacks=[MlflowLive()])
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
