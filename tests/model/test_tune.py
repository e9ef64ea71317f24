"""The tune stage on a real MLflow store: nested trial runs, a loadable tuned model, reports,
a search that resumes after an interruption, and the time budget."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from nucseg import config
from nucseg.mlops.logged_models import MlflowLive
from nucseg.core.search_space import OBJECTIVE
from nucseg.mlops import tuners
from nucseg.stages import tune

pytestmark = pytest.mark.slow  # every test here runs a real Keras Tuner search

ROOT = Path(__file__).resolve().parents[2]
SPACE_NAMES = ("base_filters", "depth", "dropout", "learning_rate", "bce_weight", "dice_weight")


def make_prepared(root: Path, count: int = 6, size: int = 64) -> None:
    """`count` prepare-style npz samples with bright disks, the last two in the val split."""
    rng = np.random.default_rng(0)
    (root / "prepared").mkdir()
    for i in range(count):
        labels = np.zeros((size, size), np.uint16)
        for label in range(1, 5):
            rr, cc = disk(tuple(rng.integers(8, size - 8, 2)), rng.integers(4, 9), shape=labels.shape)
            labels[rr, cc] = label
        image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        image[labels > 0] += 180
        target = np.stack([labels > 0, find_boundaries(labels, mode="inner")], axis=-1).astype(np.uint8)
        np.savez_compressed(root / "prepared" / f"img{i}.npz", image=image, labels=labels, target=target)
    pd.DataFrame({"id": [f"img{i}" for i in range(count)], "split": ["train"] * (count - 2) + ["val"] * 2,
                  "modality": "fluorescence"}).to_csv(root / "split.csv", index=False)


def tiny_params(**tune_overrides) -> dict:
    params = config.load_params(ROOT / "params.yaml")
    params["model"]["batchnorm"] = False
    params["train"].update(crop_size=32, batch_size=2, steps_per_epoch=2, val_crops=2, workers=1, max_minutes=5)
    params["tune"].update({"algorithm": "hyperband", "max_epochs": 2, "hyperband_factor": 3, "steps_per_epoch": 2,
                           "max_minutes": 5, "retrain": False, **tune_overrides})
    params["tune"]["space"] = {"base_filters": [4], "depth": [1], "dropout": [0.0, 0.2],
                               "learning_rate": [0.001, 0.01], "bce_weight": [0.5, 1.5], "dice_weight": [0.5, 1.5]}
    return params


def run_tune(params: dict, root: Path) -> dict:
    return tune.run(params, split_path=root / "split.csv", samples_dir=root / "prepared",
                    tuner_dir=root / "models" / "tuner", model_dir=root / "models" / "tuned",
                    metrics_path=root / "reports" / "tune_metrics.json",
                    trials_path=root / "reports" / "tune_trials.csv")


def isolate(mp: pytest.MonkeyPatch, root: Path) -> str:
    """MLflow store and artifacts, and the project root (lineage tags), all under `root`."""
    uri = f"sqlite:///{root}/mlflow.db"
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setattr(config, "ROOT", root)
    return uri


def client(uri: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(uri)  # model URIs resolve through the global store
    return mlflow.MlflowClient()


def runs_named(mlflow_client: mlflow.MlflowClient, name: str) -> list:
    experiment = mlflow_client.get_experiment_by_name(config.EXPERIMENT_NAME)
    return mlflow_client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")


def children(mlflow_client: mlflow.MlflowClient, parent_id: str) -> list:
    experiment = mlflow_client.get_experiment_by_name(config.EXPERIMENT_NAME)
    return mlflow_client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A hyperband search (2 trials of 2 epochs) interrupted by Ctrl-C in its second trial, then rerun."""
    root = tmp_path_factory.mktemp("tune")
    make_prepared(root)
    params = tiny_params()
    with pytest.MonkeyPatch.context() as mp:
        uri = isolate(mp, root)
        original = MlflowLive.on_epoch_end

        def interrupt_second_trial(self, epoch, logs=None):
            original(self, epoch, logs)
            if mlflow.active_run().info.run_name == "trial-0001":
                raise KeyboardInterrupt("simulated Ctrl-C in the second trial")

        with pytest.MonkeyPatch.context() as crash:
            crash.setattr(MlflowLive, "on_epoch_end", interrupt_second_trial)
            with pytest.raises(KeyboardInterrupt):
                run_tune(params, root)
        state = json.loads((root / "models" / "tuner" / tuners.STATE_FILE).read_text())
        metrics = run_tune(params, root)
        yield types.SimpleNamespace(root=root, uri=uri, params=params, parent_id=state["run_id"], metrics=metrics)


def test_interrupted_search_resumes_under_the_same_parent_run(search):
    assert search.metrics["trials"] == 2 and search.metrics["trials_this_session"] == 1
    [parent] = runs_named(client(search.uri), "tune")
    assert parent.info.run_id == search.parent_id
    assert len(runs_named(client(search.uri), "trial-0000")) == 1  # the finished trial was not run again
    retried = runs_named(client(search.uri), "trial-0001")
    assert sorted(r.info.status for r in retried) == ["FAILED", "FINISHED"]


def test_every_trial_is_a_nested_run_with_its_hyperparameters_and_val_loss(search):
    [parent] = runs_named(client(search.uri), "tune")
    trials = children(client(search.uri), parent.info.run_id)
    assert len(trials) == 3  # trial 0000, the interrupted 0001 and its retry
    for trial in trials:
        assert trial.data.tags["stage"] == "tune" and trial.info.run_name == f"trial-{trial.data.tags['trial_id']}"
        assert set(SPACE_NAMES) <= set(trial.data.params) and trial.data.params["base_filters"] == "4"
        assert np.isfinite(trial.data.metrics["val_loss"])
    [first] = runs_named(client(search.uri), "trial-0000")
    assert [m.step for m in client(search.uri).get_metric_history(first.info.run_id, "val_loss")] == [0, 1]
    assert parent.data.params["tune.algorithm"] == "hyperband" and "git_commit" in parent.data.tags
    assert parent.data.metrics["trials"] == 2 and "best.learning_rate" in parent.data.metrics
    artifacts = {a.path for a in client(search.uri).list_artifacts(parent.info.run_id)}
    assert {"best_hyperparameters.json", "tune_trials.csv"} <= artifacts


def test_tuned_model_is_logged_in_its_own_run_and_loads(search):
    info = json.loads((search.root / "models" / "tuned" / "run.json").read_text())
    run = client(search.uri).get_run(info["run_id"])
    assert run.info.run_name == "tuned" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["model_kind"] == "tuned" and run.data.tags["tune_run_id"] == search.parent_id
    assert set(info["hyperparameters"]) == set(SPACE_NAMES)
    assert float(run.data.params["train.learning_rate"]) == pytest.approx(info["hyperparameters"]["learning_rate"])
    assert run.data.metrics["val_loss"] == pytest.approx(search.metrics["best_trial_val_loss"], abs=1e-5)
    made = {path.name for path in (search.root / "models" / "tuned").iterdir()}
    assert {"model.keras", "run.json"} <= made and "recipe.json" not in made  # its thresholds: `package`'s choice
    model = mlflow.keras.load_model(info["model_uri"])
    assert model.predict_on_batch(np.zeros((1, 32, 48, 3), np.float32)).shape == (1, 32, 48, 2)
    assert (search.root / "models" / "tuned" / "model.keras").exists()


def test_reports_list_every_trial_and_the_best_configuration(search):
    metrics = json.loads((search.root / "reports" / "tune_metrics.json").read_text())
    trials = pd.read_csv(search.root / "reports" / "tune_trials.csv")
    assert metrics == search.metrics and set(metrics["best_hyperparameters"]) == set(SPACE_NAMES)
    assert list(trials["trial"]) == [0, 1] and set(trials["status"]) == {"COMPLETED"}
    assert {*SPACE_NAMES, "trial_id", "epochs", "val_dsb", "val_loss", "val_iou", "val_dice"} <= set(trials.columns)
    assert metrics["best_trial_val_dsb"] == pytest.approx(trials["val_dsb"].max(), abs=1e-5)  # the objective


def test_the_objective_is_the_dsb_of_whole_val_images_after_post_processing(search):
    """The best trial's model (kept as the tuned model: retrain is off) scores on the val images,
    with the params' post-processing and no test-time augmentation, exactly the val_dsb the tuner
    ranked it by."""
    import keras

    from nucseg.core.data import load_split
    from nucseg.core.evaluation import evaluate_model
    from nucseg.core.segment import Recipe

    assert OBJECTIVE == ("val_dsb", "max")
    val = load_split(search.root / "split.csv", search.root / "prepared", ("val",))["val"]
    model = keras.saving.load_model(search.root / "models" / "tuned" / "model.keras", compile=False)
    trial_recipe = dataclasses.replace(Recipe.from_params(search.params), tta="none", rescale=False)
    per_image, _ = evaluate_model(model, val, trial_recipe)
    assert search.metrics["best_trial_val_dsb"] == pytest.approx(per_image["dsb"].mean(), abs=1e-5)
    [parent] = runs_named(client(search.uri), "tune")
    finished = [t for t in children(client(search.uri), parent.info.run_id) if t.info.status == "FINISHED"]
    trials = pd.read_csv(search.root / "reports" / "tune_trials.csv")
    assert sorted(t.data.metrics["val_dsb"] for t in finished) == pytest.approx(sorted(trials["val_dsb"]))


def test_rerunning_a_finished_search_runs_no_trial(search):
    metrics = run_tune(search.params, search.root)
    assert metrics["trials"] == 2 and metrics["trials_this_session"] == 0
    assert metrics["best_hyperparameters"] == search.metrics["best_hyperparameters"]
    assert len(children(client(search.uri), search.parent_id)) == 3


def test_a_spent_clock_cap_stops_after_one_trial_says_so_and_retrains_the_best(tmp_path, monkeypatch):
    make_prepared(tmp_path)
    uri = isolate(monkeypatch, tmp_path)
    params = tiny_params(algorithm="bayesian", max_trials=3, max_minutes=1e-9, retrain=True)  # spent at once
    params["train"]["epochs"] = 1  # the retraining gets the untuned model's budget
    metrics = run_tune(params, tmp_path)
    assert metrics["trials"] == 1 and len(pd.read_csv(tmp_path / "reports" / "tune_trials.csv")) == 1
    assert metrics["budget_cut"] == "the clock cap tune.max_minutes=1e-09 stopped the search after 1 trial(s)"
    info = json.loads((tmp_path / "models" / "tuned" / "run.json").read_text())
    tuned = client(uri).get_run(info["run_id"])
    assert tuned.data.tags["budget_cut"] == metrics["budget_cut"]
    assert client(uri).get_run(tuned.data.tags["tune_run_id"]).data.tags["budget_cut"] == metrics["budget_cut"]
    artifacts = {a.path for a in client(uri).list_artifacts(info["run_id"], "plots")}
    assert "plots/history.csv" in artifacts  # retrained with core.training.fit
    assert [m.step for m in client(uri).get_metric_history(info["run_id"], "val_loss")] == [0]
