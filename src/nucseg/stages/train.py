"""Stage `train`: the untuned U-Net, tracked in MLflow, resumable after an interruption. Its
post-processing thresholds are chosen by `package`, so a post-processing change trains nothing.

Every epoch writes `last.keras` and `state.json` into `checkpoints/untuned`, outside the DVC
output `models/untuned` (which DVC deletes before it reruns the stage); a rerun after a crash or
Ctrl-C (`nucseg train` or `dvc repro`) reloads them (optimizer and callback progress included),
continues at the next epoch with the same data stream, and keeps logging into the same MLflow
run. A state saved on other data, split, params or code is not resumed: training starts afresh
and says which changed (`core.resume`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.data import load_split
from nucseg.core.training import build_model, fit, load_state, training_settings, write_history
from nucseg.mlops import tracking
from nucseg.mlops.logged_models import MlflowLive, log_keras_model, log_training_curves
from nucseg.mlops.runs import stage_run

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
    settings = training_settings(params, tracking.data_md5(), split_path, __file__)
    state = load_state(work_dir, settings)
    tracking.setup()
    loaded = load_split(split_path, samples_dir, ("train", "val"), labelled=(), desc="train: loading")
    train, val = loaded["train"], loaded["val"]
    if state:
        model = keras.saving.load_model(work_dir / "last.keras")
        initial_epoch = state["epoch"] + 1
        log.info("resuming MLflow run %s at epoch %d from %s", state["run_id"], initial_epoch + 1, work_dir / "last.keras")
    else:
        model, initial_epoch = build_model(params["model"], cfg), 0
    started = time.monotonic()
    with stage_run("train", params, split_path, () if state else ("train", "val"), run_name="untuned",
                   sections=("model", "train", "augment", "prepare"), tags={"model_kind": "untuned"},
                   run_id=state["run_id"] if state else None) as active:
        live = MlflowLive()
        if state and state.get("finished"):  # the crash came after the last epoch
            history, cut = pd.read_csv(work_dir / "history.csv"), state.get("budget_cut", "")
        else:
            history, cut = fit(model, train, val, params, work_dir, active.info.run_id, settings,
                               initial_epoch=initial_epoch, extra_callbacks=[live], state=state)
        live.backfill(active.info.run_id, history)  # epochs whose metrics the server missed
        if cut:
            mlflow.set_tag("budget_cut", cut)
        if (work_dir / "best.keras").exists():
            model = keras.saving.load_model(work_dir / "best.keras")
        model_dir.mkdir(parents=True, exist_ok=True)
        model.save(model_dir / "model.keras")
        write_history(model_dir, history)
        log_training_curves(model_dir)
        model_uri = log_keras_model(model)
        best = history.loc[history["val_loss"].idxmin()]
        metrics = {"epochs": int(len(history)), "best_epoch": int(best["epoch"]) + 1, "budget_cut": cut,
                   "val_loss": round(float(best["val_loss"]), 5), "val_iou": round(float(best["val_iou"]), 5),
                   "val_dice": round(float(best["val_dice"]), 5),
                   "minutes_this_session": round((time.monotonic() - started) / 60, 2),
                   "crops_per_second": round((len(history) - initial_epoch) * int(cfg["steps_per_epoch"])
                                             * int(cfg["batch_size"]) / max(time.monotonic() - started, 1e-9), 2)}
        io.write_json(model_dir / "run.json", {"run_id": active.info.run_id, "model_uri": model_uri})
    io.write_json(metrics_path, metrics)
    io.write_csv(history_path, history)
    shutil.rmtree(work_dir)  # finished: nothing to resume
    log.info("trained: %s", metrics)
    return metrics
