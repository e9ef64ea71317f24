"""Leave-type-out on a real MLflow store: a fold trains without its image types and scores only
them; folds that name types the data lacks are skipped, and none left is an error."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from nucseg.stages import unseen
from conftest import write_synthetic_prepared


@pytest.fixture
def two_types(tmp_path):
    folder = write_synthetic_prepared(tmp_path / "data", n_images=12)
    split = pd.read_csv(folder / "split.csv")
    split.loc[split.index % 2 == 1, "modality"] = "histology"  # every split holds both types
    split.to_csv(folder / "split.csv", index=False)
    return folder


@pytest.mark.slow
def test_fold_scores_only_the_types_it_held_out(two_types, tiny_params, mlflow_store, tmp_path):
    tiny_params["unseen"].update(epochs=1, folds=[["histology"], ["brightfield 1024x1024"]])
    summary = unseen.run(tiny_params, two_types / "split.csv", two_types / "prepared",
                         tmp_path / "unseen.json", tmp_path / "unseen.csv")
    assert list(summary["per_type"]) == ["histology 64x64"]
    assert summary["per_type"]["histology 64x64"]["images"] == 6  # from every split: none was trained on
    assert summary["mean_dsb"] == summary["per_type"]["histology 64x64"]["dsb"]
    assert set(pd.read_csv(tmp_path / "unseen.csv")["type"]) == {"histology 64x64"}
    assert json.loads((tmp_path / "unseen.json").read_text()) == summary
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'unseen'").iloc[0]
    assert run["metrics.unseen_dsb_histology_64x64"] == summary["mean_dsb"]


def test_no_fold_left_is_an_error_naming_the_types(two_types, tiny_params, mlflow_store, tmp_path):
    tiny_params["unseen"].update(epochs=1, folds=[["brightfield"]])
    with pytest.raises(ValueError, match="no fold could be trained.*fluorescence 64x64"):
        unseen.run(tiny_params, two_types / "split.csv", two_types / "prepared", tmp_path / "u.json", tmp_path / "u.csv")


def test_a_fold_names_types_exactly_or_by_modality():
    types = {"histology 256x320", "fluorescence 256x256", "fluorescence 520x696"}
    assert unseen.held_out_types(["fluorescence"], types) == ["fluorescence 256x256", "fluorescence 520x696"]
    assert unseen.held_out_types(["fluorescence 256x256", "histology"], types) == ["fluorescence 256x256",
                                                                                    "histology 256x320"]
    assert unseen.held_out_types(["fluo"], types) == []
