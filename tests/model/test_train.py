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


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_follows_the_budget_and_restarts_on_other_settings(tiny_params, synthetic_prepared, mlflow_store,
                                                                   tmp_path, monkeypatch, caplog):
    original = MlflowLive.on_epoch_end

    def crash(self, epoch, logs=None):
        raise KeyboardInterrupt("simulated interruption")

    def interrupted(params):
        monkeypatch.setattr(MlflowLive, "on_epoch_end", crash)
        with pytest.raises(KeyboardInterrupt):
            run_train(params, synthetic_prepared, tmp_path)
        monkeypatch.setattr(MlflowLive, "on_epoch_end", original)
        return json.loads((tmp_path / "checkpoints" / "state.json").read_text())["run_id"]

    first = interrupted(tiny_params)
    budget = {**tiny_params, "train": {**tiny_params["train"], "epochs": 3, "max_minutes": 7}}  # budgets change no epoch
    assert run_train(budget, synthetic_prepared, tmp_path)["epochs"] == 3
    assert json.loads((tmp_path / "models" / "run.json").read_text())["run_id"] == first

    second = interrupted(tiny_params)
    changed = {**tiny_params, "train": {**tiny_params["train"], "learning_rate": 0.1234}}
    with caplog.at_level("WARNING"):
        assert run_train(changed, synthetic_prepared, tmp_path)["epochs"] == 2
    assert "interrupted after epoch 1 on other params.train; starting afresh" in caplog.text
    assert json.loads((tmp_path / "models" / "run.json").read_text())["run_id"] != second


@pytest.mark.slow
def test_clock_cap_is_opt_in_and_labels_the_run_it_cuts(tiny_params, synthetic_prepared, mlflow_store, tmp_path):
    tiny_params["train"].update(epochs=3, max_minutes=0)  # 0: no cap
    uncapped = run_train(tiny_params, synthetic_prepared, tmp_path)
    assert uncapped["epochs"] == 3 and uncapped["budget_cut"] == ""
    tiny_params["train"].update(max_minutes=1e-9)
    metrics = run_train(tiny_params, synthetic_prepared, tmp_path)
    assert metrics["epochs"] == 1
    assert metrics["budget_cut"] == "the clock cap train.max_minutes=1e-09 stopped training after epoch 1 of 3"
    run_id = json.loads((tmp_path / "models" / "run.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(run_id).data.tags["budget_cut"] == metrics["budget_cut"]


@pytest.mark.slow
def test_train_runs_on_the_backend_params_name_and_its_network_serves_anywhere(tiny_params, tmp_path):
    """`train.backend: jax` trains with JAX (what an accelerator runs); the run says so, and the
    network file loads and predicts under TensorFlow like any other. An unknown backend is one line."""
    import os
    import subprocess

    import keras
    import yaml

    from conftest import BIN, write_synthetic_prepared

    write_synthetic_prepared(tmp_path / "artifacts")
    tiny_params["train"]["backend"] = "jax"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([str(BIN / "nucseg"), "train"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "models" / "untuned" / "run.json").read_text())
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert mlflow.MlflowClient().get_run(info["run_id"]).data.tags["keras_backend"] == "jax"
    assert keras.backend.backend() == "tensorflow"
    network = keras.saving.load_model(tmp_path / "models" / "untuned" / "model.keras", compile=False)
    maps = network.predict_on_batch(np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32))
    assert maps.shape == (1, 64, 64, 2) and np.isfinite(maps).all()

    tiny_params["train"]["backend"] = "torch"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    refused = subprocess.run([str(BIN / "nucseg"), "train"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "train.backend must be one of ('tensorflow', 'jax'), got 'torch'" in refused.stderr
    assert "Traceback" not in refused.stderr
