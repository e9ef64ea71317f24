"""Two `promote` runs at once on one store leave exactly one consistent champion: each
candidate registered once, `champion` and `challenger` from one decision, both reports alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import BIN, ROOT, write_synthetic_prepared
from nucseg import config, io


def network(bright: bool):
    """1x1 convolutions: foreground = sigmoid(20 (mean intensity - 0.5)), or never."""
    import keras

    inputs = keras.Input((None, None, 3))
    maps = keras.layers.Conv2D(2, 1, activation="sigmoid", name="maps")(inputs)
    model = keras.Model(inputs, maps)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = 20 / 3 if bright else 0.0
    model.get_layer("maps").set_weights([kernel, np.array([-10.0, -10.0], np.float32)])
    return model


@pytest.mark.slow
def test_two_promotions_at_once_leave_one_consistent_champion(tmp_path, monkeypatch):
    import mlflow

    from nucseg.mlops import tracking
    from nucseg.mlops.logged_models import log_keras_model

    write_synthetic_prepared(tmp_path / "artifacts")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.setup()
    for kind, bright in (("untuned", False), ("tuned", True)):
        with mlflow.start_run() as active:
            mlflow.log_metric("val_loss", 0.5)
            io.write_json(tmp_path / "models" / kind / "run.json",
                          {"run_id": active.info.run_id, "model_uri": log_keras_model(network(bright))})
            network(bright).save(tmp_path / "models" / kind / "model.keras")

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri}
    for kind in ("untuned", "tuned"):
        subprocess.run([str(BIN / "nucseg"), "package", kind], cwd=tmp_path, env=env, check=True, capture_output=True)
    processes = []
    for index in range(2):
        folder = tmp_path / f"promote{index}"
        (folder / "reports").mkdir(parents=True)
        for name in ("artifacts", "models", "params.yaml"):
            (folder / name).symlink_to(tmp_path / name)
        processes.append(subprocess.Popen([str(BIN / "nucseg"), "promote"], cwd=folder, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{config.REGISTERED_MODEL}'")
    assert sorted(v.tags["candidate"] for v in versions) == ["tuned", "untuned"]  # each registered once
    aliases = client.get_registered_model(config.REGISTERED_MODEL).aliases
    by_candidate = {v.tags["candidate"]: v.version for v in versions}
    assert aliases == {"champion": by_candidate["tuned"], "challenger": by_candidate["untuned"]}
    reports = [json.loads((tmp_path / f"promote{i}" / "reports" / "promotion.json").read_text()) for i in range(2)]
    assert reports[0]["champion_version"] == reports[1]["champion_version"] == int(by_candidate["tuned"])
