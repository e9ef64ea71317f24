"""Training faults: `dvc repro` killed mid-training resumes (and refuses to resume under other
params); the tracking server going away mid-training costs no epoch and no metric. Real DVC,
a real `mlflow server` process that is really killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import mlflow
import pytest
import yaml

from conftest import BIN, build_project, free_port, pipeline_env, wait_until_up

pytestmark = pytest.mark.slow


def test_training_killed_under_dvc_repro_resumes(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    env = pipeline_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    build_project(project, env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=5, steps_per_epoch=4, early_stopping_patience=10)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    state_file = project / "checkpoints" / "untuned" / "state.json"
    with open(tmp_path / "first.log", "w") as log:
        repro = subprocess.Popen(["dvc", "repro", "train"], cwd=project, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (state_file.exists() and json.loads(state_file.read_text())["epoch"] >= 1):
        assert repro.poll() is None, f"training ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "training never reached its second epoch"
        time.sleep(0.2)
    os.killpg(repro.pid, signal.SIGKILL)  # a crash, not a polite Ctrl-C
    repro.wait()
    killed = json.loads(state_file.read_text())

    resumed = subprocess.run(["dvc", "repro", "train"], cwd=project, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming MLflow run {killed['run_id']} at epoch {killed['epoch'] + 2}" in resumed.stdout + resumed.stderr
    info = json.loads((project / "models" / "untuned" / "run.json").read_text())
    assert info["run_id"] == killed["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    steps = sorted(m.step for m in mlflow.MlflowClient().get_metric_history(info["run_id"], "val_loss"))
    assert steps == [0, 1, 2, 3, 4]  # every epoch once, across the crash
    assert not (project / "checkpoints" / "untuned").exists()


class ServerOutage:
    """A real `mlflow server` on a sqlite store that can be stopped and started again."""

    def __init__(self, folder):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--default-artifact-root", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **pipeline_env()})
        wait_until_up(f"{self.url}/health", self.process, self.folder / "server.log", "mlflow server")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_tracking_server_outage_mid_training_costs_no_epoch(tiny_params, synthetic_prepared, tmp_path, monkeypatch,
                                                           caplog):
    import keras

    from nucseg.core import training
    from nucseg.core.data import load_split
    from nucseg.mlops import tracking
    from nucseg.mlops.logged_models import MlflowLive

    server = ServerOutage(tmp_path)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.chdir(tmp_path)
    tracking.setup()

    class Outage(keras.callbacks.Callback):
        """Stops the server after the first epoch and brings it back after the third."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                server.stop()
            if epoch == 2:
                server.start()

    tiny_params["train"].update(epochs=4, early_stopping_patience=10)
    samples = load_split(synthetic_prepared / "split.csv", synthetic_prepared / "prepared", ("train", "val"))
    model = training.build_model(tiny_params["model"], tiny_params["train"])
    live = MlflowLive()
    try:
        with caplog.at_level("WARNING"), mlflow.start_run() as run:
            history, _ = training.fit(model, samples["train"], samples["val"], tiny_params, tmp_path / "work",
                                      run.info.run_id, extra_callbacks=[live, Outage()])
            live.backfill(run.info.run_id, history)
        assert f"tracking server {server.url} did not take the metrics of epoch 2" in caplog.text
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == [0, 1, 2, 3] and live.pending == []
        assert json.loads((tmp_path / "work" / "state.json").read_text())["epoch"] == 3  # every epoch saved
    finally:
        server.stop()


def test_trials_whose_logging_fails_do_not_end_the_search(tmp_path, monkeypatch, caplog):
    from conftest import tiny_tune_params, write_synthetic_prepared
    from nucseg.core.data import load_split
    from nucseg.mlops import tracking
    from nucseg.mlops import tuners

    server = ServerOutage(tmp_path)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.chdir(tmp_path)
    tracking.setup()
    prepared = write_synthetic_prepared(tmp_path / "artifacts")
    params = tiny_tune_params(algorithm="bayesian", max_trials=2, max_epochs=1)
    samples = load_split(prepared / "split.csv", prepared / "prepared", ("train", "val"))
    val = samples["val"]
    tuner = tuners.make_tuner(params, tmp_path / "tuner", overwrite=True, deadline=float("inf"), val_samples=val)
    try:
        with mlflow.start_run() as parent:
            tuner.parent_run_id = parent.info.run_id
            server.stop()  # gone before the first trial
            with caplog.at_level("WARNING"):
                tuners.run_search(tuner, params, samples["train"], val)
            assert len(tuners.completed_trials(tuner)) == 2  # both trials trained and scored
            assert f"MLflow tracking store {server.url} did not answer" in caplog.text
            server.start()
    finally:
        server.stop()
