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
    missing = "0" * 32
    io.write_json(models / "run.json", {"run_id": missing, "model_uri": f"runs:/{missing}/model"})
    io.write_json(tmp_path / "models" / "packages" / "untuned.json", {"run_id": missing,
                                                                      "model_uri": f"runs:/{missing}/segmenter"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fresh.db")  # a store the training never saw

    result = CliRunner().invoke(app, ["evaluate", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert missing in result.output and f"sqlite:///{tmp_path}/fresh.db" in result.output
    assert "dvc repro -s -f train tune" in result.output and "Traceback" not in result.output


def write_records(root, run_id, model_uri, version):
    for folder in ("untuned", "tuned"):
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        io.write_json(root / "models" / folder / "run.json", {"run_id": run_id, "model_uri": model_uri})
        io.write_json(root / "models" / "packages" / f"{folder}.json", {"run_id": run_id, "model_uri": model_uri})
    io.write_json(root / "reports" / "promotion.json", {"candidates": {"untuned": {"version": version},
                                                                       "tuned": {"version": version}}})


def test_the_store_check_finds_what_the_outputs_name_and_names_what_is_gone(tmp_path, monkeypatch):
    import mlflow

    from nucseg.mlops import store_check, tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.setup()
    with mlflow.start_run() as run:
        logged = mlflow.pyfunc.log_model(name="model", python_model=lambda frame: frame, input_example=[[1.0]])
    version = mlflow.register_model(logged.model_uri, "nucseg-unet").version
    write_records(tmp_path, run.info.run_id, f"models:/{logged.model_id}", version)
    records = store_check.recorded(tmp_path, "nucseg-unet")
    assert [(stage, kind) for stage, _, kind, _ in records] == [
        ("train", "run"), ("train", "logged model"), ("tune", "run"), ("tune", "logged model"),
        ("package", "logged model"), ("package", "logged model"),
        ("promote", "registered version"), ("promote", "registered version")]
    client = mlflow.MlflowClient()
    assert store_check.missing(client, records) == []

    result = CliRunner().invoke(app, ["check-store", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 0 and "MLflow store: {'store'" in result.output and "'checked': 8" in result.output

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")  # another store: nothing in it
    tracking.setup()
    absent = store_check.missing(mlflow.MlflowClient(), records)
    assert absent == records
    message = store_check.rebuild_message("sqlite:///other.db", absent)
    assert message.startswith(f"the MLflow store sqlite:///other.db lacks what the pipeline logged there: run "
                              f"{run.info.run_id} (models/untuned/run.json, stage train);")
    assert f"registered version nucseg-unet v{version} (reports/promotion.json, stage promote)" in message
    assert message.endswith("`dvc repro -s -f train tune`, then `dvc repro`.")
    assert store_check.rebuild_message("s", absent[-1:]).endswith("`dvc repro -s -f promote`, then `dvc repro`.")
    assert store_check.rebuild_message("s", absent[4:]).endswith("`dvc repro -s -f package promote`, then `dvc repro`.")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/deleted.db")  # a store that is not there
    result = CliRunner().invoke(app, ["check-store", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"sqlite:///{tmp_path}/deleted.db lacks what the pipeline logged there" in result.output


def test_package_names_an_unknown_network_and_a_missing_training_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = ["--params", str(ROOT / "params.yaml")]

    unknown = CliRunner().invoke(app, ["package", "nonsense", *params])
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output
    assert "no trained network called 'nonsense': expected one of untuned, tuned" in unknown.output
    untrained = CliRunner().invoke(app, ["package", "untuned", *params])
    assert untrained.exit_code == 1 and "Traceback" not in untrained.output
    assert "models/untuned/run.json: not found; run the stage that trains this model first" in untrained.output
