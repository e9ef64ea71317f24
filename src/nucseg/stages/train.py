"""Stage `train`: the untuned U-Net, tracked in MLflow, resumable after an interruption, with
its post-processing thresholds chosen on `val` (`recipe.json` beside the model).

Every epoch writes `last.keras` and `state.json` into `checkpoints/untuned`, outside the DVC
output `models/untuned` (which DVC deletes before it reruns the stage); a rerun after a crash or
Ctrl-C (`nucseg train` or `dvc repro`) reloads them (optimizer and callback progress included),
continues at the next epoch with the same data stream, and keeps logging into the same MLflow
run. A state saved under other params is refused with what to do (`training.load_state`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.training import (build_model, choose_recipe, curves_figure, fit, load_state, settings_digest,
                                  split_samples)
from nucseg.mlops import datasets, tracking
from nucseg.mlops.logged_models import MlflowLive, log_keras_model

log = get_logger("nucseg.train")

import keras  # noqa: E402 - after config has set the backend


def run(params: dict[str, Any], split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", model_dir: str | Path = "models/untuned",
        metrics_path: str | Path = "reports/train_metrics.json",
        history_path: str | Path = "reports/train_history.csv",
        work_dir: str | Path = "checkpoints/untuned") -> dict[str, Any]:
    import mlflow

    cfg = params["train"]
    model_dir, work_dir = Path(model_dir), Path(work_dir)
    keras.utils.set_random_seed(int(cfg["seed"]))
    state = load_state(work_dir, settings_digest(params))  # refuses before anything else happens
    tracking.setup()
    train, val = split_samples(split_path, samples_dir)
    if state:
        model = keras.saving.load_model(work_dir / "last.keras")
        initial_epoch = state["epoch"] + 1
        log.info("resuming MLflow run %s at epoch %d from %s", state["run_id"], initial_epoch + 1, work_dir / "last.keras")
    else:
        model, initial_epoch = build_model(params["model"], cfg), 0
    started = time.monotonic()
    with mlflow.start_run(run_id=state["run_id"] if state else None, run_name=None if state else "untuned") as active:
        if not state:
            mlflow.set_tags({"stage": "train", "model_kind": "untuned", **tracking.lineage_tags()})
            mlflow.log_params(tracking.flatten({k: params[k] for k in ("model", "train", "augment", "prepare")}))
            datasets.log_split_inputs(split_path, ("train", "val"), params)
        live = MlflowLive()
        if state and state.get("finished"):  # the crash came after the last epoch
            history = pd.read_csv(work_dir / "history.csv")
        else:
            history = fit(model, train, val, params, work_dir, active.info.run_id, initial_epoch=initial_epoch,
                          extra_callbacks=[live], state=state)
        live.backfill(active.info.run_id, history)  # epochs whose metrics the server missed
        if (work_dir / "best.keras").exists():
            model = keras.saving.load_model(work_dir / "best.keras")
        model_dir.mkdir(parents=True, exist_ok=True)
        model.save(model_dir / "model.keras")
        chosen = choose_recipe(model, params, train, val, model_dir)
        io.write_csv(model_dir / "history.csv", history)
        figure = model_dir / "training_curves.png"
        curves_figure(history, figure)
        mlflow.log_artifact(str(figure), "plots")
        mlflow.log_artifact(str(model_dir / "history.csv"), "plots")
        model_uri = log_keras_model(model)
        best = history.loc[history["val_loss"].idxmin()]
        metrics = {"epochs": int(len(history)), "best_epoch": int(best["epoch"]) + 1,
                   "val_loss": round(float(best["val_loss"]), 5), "val_iou": round(float(best["val_iou"]), 5),
                   "val_dice": round(float(best["val_dice"]), 5),
                   **{key: round(value, 4) for key, value in chosen.items()},
                   "minutes_this_session": round((time.monotonic() - started) / 60, 2),
                   "crops_per_second": round((len(history) - initial_epoch) * int(cfg["steps_per_epoch"])
                                             * int(cfg["batch_size"]) / max(time.monotonic() - started, 1e-9), 2)}
        io.write_json(model_dir / "run.json", {"run_id": active.info.run_id, "model_uri": model_uri})
    io.write_json(metrics_path, metrics)
    io.write_csv(history_path, history)
    shutil.rmtree(work_dir)  # finished: nothing to resume
    log.info("trained: %s", metrics)
    return metrics
