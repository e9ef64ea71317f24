"""Leave-type-out on a real MLflow store: a fold trains without its image types and is scored on
them only; folds that name types the data lacks train nothing and say why, and none left is an
error."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from nucseg.core.folds import held_out_types
from nucseg.stages import unseen, unseen_fold
from conftest import write_synthetic_prepared


@pytest.fixture
def two_types(tmp_path):
    folder = write_synthetic_prepared(tmp_path / "data", n_images=12)
    split = pd.read_csv(folder / "split.csv")
    split.loc[split.index % 2 == 1, "modality"] = "histology"  # every split holds both types
    split.to_csv(folder / "split.csv", index=False)
    return folder


def train_folds(params, data, folds_dir) -> list[dict]:
    return [unseen_fold.run(params, name, data / "split.csv", data / "prepared", folds_dir)
            for name in params["unseen"]["folds"]]


@pytest.mark.slow
def test_fold_scores_only_the_types_it_held_out(two_types, tiny_params, mlflow_store, tmp_path):
    tiny_params["unseen"].update(epochs=1, folds={"histology": ["histology"], "bright": ["brightfield 1024x1024"]})
    histology, bright = train_folds(tiny_params, two_types, tmp_path / "folds")
    assert histology["trained"] and (tmp_path / "folds" / "histology" / "model.keras").exists()
    assert histology["held_out"] == ["histology 64x64"] and histology["held_out_images"] == 6
    assert not bright["trained"] and "brightfield 1024x1024" in bright["reason"]
    assert not (tmp_path / "folds" / "bright" / "model.keras").exists()
    summary = unseen.run(tiny_params, two_types / "split.csv", two_types / "prepared", tmp_path / "folds",
                         tmp_path / "unseen.json", tmp_path / "unseen.csv")
    assert list(summary["per_type"]) == ["histology 64x64"]
    assert summary["per_type"]["histology 64x64"]["images"] == 6  # from every split: none was trained on
    assert summary["mean_dsb"] == summary["per_type"]["histology 64x64"]["dsb"]
    assert set(pd.read_csv(tmp_path / "unseen.csv")["type"]) == {"histology 64x64"}
    assert json.loads((tmp_path / "unseen.json").read_text()) == summary
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'unseen'").iloc[0]
    assert run["metrics.unseen_dsb_histology_64x64"] == summary["mean_dsb"]

    # a post-processing change scores the same fold network again: nothing is trained
    network = tmp_path / "folds" / "histology" / "model.keras"
    trained_at = network.stat().st_mtime_ns
    tiny_params["postprocess"]["search"] = {}
    tiny_params["postprocess"]["fg_threshold"] = 0.3
    unseen.run(tiny_params, two_types / "split.csv", two_types / "prepared", tmp_path / "folds",
               tmp_path / "unseen.json", tmp_path / "unseen.csv")
    assert network.stat().st_mtime_ns == trained_at


def test_no_fold_left_is_an_error_naming_the_types(two_types, tiny_params, mlflow_store, tmp_path):
    tiny_params["unseen"].update(epochs=1, folds={"bright": ["brightfield"]})
    train_folds(tiny_params, two_types, tmp_path / "folds")
    with pytest.raises(ValueError, match="no fold could be trained.*fluorescence 64x64"):
        unseen.run(tiny_params, two_types / "split.csv", two_types / "prepared", tmp_path / "folds",
                   tmp_path / "u.json", tmp_path / "u.csv")


def test_a_fold_not_trained_yet_and_an_unknown_fold_are_named(two_types, tiny_params, tmp_path):
    tiny_params["unseen"]["folds"] = {"histology": ["histology"]}
    with pytest.raises(ValueError, match="histology/fold.json: not found.*unseen_fold@histology"):
        unseen.run(tiny_params, two_types / "split.csv", two_types / "prepared", tmp_path / "folds")
    with pytest.raises(ValueError, match="no fold 'colour'.*histology"):
        unseen_fold.run(tiny_params, "colour", two_types / "split.csv", two_types / "prepared", tmp_path / "folds")


def test_a_fold_names_types_exactly_or_by_modality():
    types = {"histology 256x320", "fluorescence 256x256", "fluorescence 520x696"}
    assert held_out_types(["fluorescence"], types) == ["fluorescence 256x256", "fluorescence 520x696"]
    assert held_out_types(["fluorescence 256x256", "histology"], types) == ["fluorescence 256x256",
                                                                             "histology 256x320"]
    assert held_out_types(["fluo"], types) == []
