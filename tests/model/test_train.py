"""The train stage on a real MLflow store: logged run, reloadable model, resumable training."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from nucseg.mlops.logged_models import MlflowLive
from nucseg.stages import train


def run_train(params, prepared, out):
    return train.run(params, split_path=prepared / "split.csv", samples_dir=prepared / "prepared",
                     model_dir=out / "models", metrics_path=out / "metrics.json", history_path=out / "history.csv",
                     work_dir=out / "checkpoints")


def test_train_logs_run_and_model_loads_back_identically(tiny_params, synthetic_prepared, mlflow_store, tmp_path):
    metrics = run_train(tiny_params, synthetic_prepared, tmp_path)
    info = json.loads((tmp_path / "models" / "run.json").read_text())
    run = mlflow.MlflowClient().get_run(info["run_id"])

    assert metrics["epochs"] == 2
    assert run.data.params["model.depth"] == "2" and run.data.params["train.crop_size"] == "32"
    assert run.data.tags["model_kind"] == "untuned" and len(run.data.tags["data_md5"]) == 36
    history = mlflow.MlflowClient().get_metric_history(info["run_id"], "val_loss")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(info["run_id"], "plots")}
    assert {"plots/training_curves.png", "plots/history.csv"} <= artifacts

    import keras

    image = np.random.default_rng(0).random((1, 64, 96, 3), dtype=np.float32)
    local = keras.saving.load_model(tmp_path / "models" / "model.keras")
    logged = mlflow.keras.load_model(info["model_uri"])
    np.testing.assert_array_equal(logged.predict_on_batch(image), local.predict_on_batch(image))


def test_interrupted_training_resumes_in_the_same_run(tiny_params, synthetic_prepared, mlflow_store, tmp_path,
                                                      monkeypatch):
    import pandas as pd

    tiny_params["train"]["epochs"] = 3
    original = MlflowLive.on_epoch_end

    def crash_in_second_epoch(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")
        original(self, epoch, logs)

    monkeypatch.setattr(MlflowLive, "on_epoch_end", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_params, synthetic_prepared, tmp_path)
    # The epoch was saved before MLflow heard of it; the callbacks' progress with it.
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["finished"] and (tmp_path / "checkpoints" / "last.keras").exists()
    val_losses = pd.read_csv(tmp_path / "checkpoints" / "history.csv")["val_loss"]
    assert state["callbacks"]["checkpoint"]["best"] == pytest.approx(val_losses.min())
    assert state["callbacks"]["early_stopping"]["best"] == pytest.approx(val_losses.min())
    assert state["callbacks"]["early_stopping"]["wait"] == int(val_losses.iloc[1] >= val_losses.iloc[0])

    monkeypatch.setattr(MlflowLive, "on_epoch_end", original)
    metrics = run_train(tiny_params, synthetic_prepared, tmp_path)
    info = json.loads((tmp_path / "models" / "run.json").read_text())
    assert info["run_id"] == state["run_id"]
    assert metrics["epochs"] == 3
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(info["run_id"], "loss")]
    assert sorted(steps) == [0, 1, 2]  # epoch 1's metrics, never sent, were sent on resuming
    assert not (tmp_path / "checkpoints").exists()


def test_resume_under_changed_params_is_refused(tiny_params, synthetic_prepared, mlflow_store, tmp_path, monkeypatch):
    from nucseg.core.training import ResumeRefused

    tiny_params["train"]["epochs"] = 2
    original = MlflowLive.on_epoch_end

    def crash(self, epoch, logs=None):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(MlflowLive, "on_epoch_end", crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_params, synthetic_prepared, tmp_path)
    monkeypatch.setattr(MlflowLive, "on_epoch_end", original)
    changed = {**tiny_params, "train": {**tiny_params["train"], "learning_rate": 0.1234}}
    with pytest.raises(ResumeRefused, match="other settings.*Restore the params.*or delete"):
        run_train(changed, synthetic_prepared, tmp_path)
    budget = {**tiny_params, "train": {**tiny_params["train"], "max_minutes": 7}}  # a budget is not a setting
    assert run_train(budget, synthetic_prepared, tmp_path)["epochs"] == 2


def test_time_budget_stops_after_one_epoch(tiny_params, synthetic_prepared, mlflow_store, tmp_path):
    tiny_params["train"].update(epochs=5, max_minutes=0)
    assert run_train(tiny_params, synthetic_prepared, tmp_path)["epochs"] == 1
