"""DVC does not see the MLflow store: with a fresh or another `mlflow.db`, `dvc status` is clean
while the runs and models the later stages read are gone. Such a stage says which run or model
is missing from which store and how to rebuild it, in one line, not a traceback."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from conftest import ROOT, write_synthetic_prepared
from nucseg import io
from nucseg.cli import app
from nucseg.config import load_params
from nucseg.core.segment import Recipe


def test_evaluate_against_a_store_without_the_training_run_says_how_to_rebuild(tmp_path, monkeypatch):
    import keras

    write_synthetic_prepared(tmp_path / "artifacts")
    params = load_params(ROOT / "params.yaml")
    params["evaluate"]["shifts"] = ["darker"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    inputs = keras.Input((None, None, 3))
    network = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="sigmoid")(inputs))
    models = tmp_path / "models" / "untuned"
    models.mkdir(parents=True)
    network.save(models / "model.keras")
    io.atomic_write_text(models / "recipe.json", Recipe.from_params(params).to_json())
    missing = "0" * 32
    io.write_json(models / "run.json", {"run_id": missing, "model_uri": f"runs:/{missing}/model"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fresh.db")  # a store the training never saw

    result = CliRunner().invoke(app, ["evaluate", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert missing in result.output and f"sqlite:///{tmp_path}/fresh.db" in result.output
    assert "dvc repro -f train tune" in result.output and "Traceback" not in result.output
