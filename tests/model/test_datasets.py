"""Each run says which data it read: MLflow datasets named for the data version, with a digest
that follows the data, the split and the preparation, read back from a real MLflow store."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from nucseg.mlops import datasets, tracking


def split_table() -> pd.DataFrame:
    return pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "group": ["a", "a", "c", "d", "e"],
                         "split": ["train", "train", "val", "test", "train"],
                         "modality": ["fluorescence"] * 4 + ["histology"], "height": 64, "width": 64})


PREPARE = {"normalize_low": 1.0, "normalize_high": 99.8, "resize": 0, "border_width": 2}
MD5 = "09bbce523195f3330a178a73c3cf2e62.dir"


def digest_of(table=None, prepare=None, md5=MD5, context="train") -> str:
    return datasets.split_dataset(split_table() if table is None else table, context, prepare or PREPARE, md5,
                                  "shared: ../../shared/dvc-remote").digest


def test_digest_follows_data_split_and_preparation():
    base = digest_of()
    assert digest_of() == base  # same inputs, same digest
    assert digest_of(md5="dfc76c97a6be4c04c0aba11b2ad46bf0.dir") != base
    moved = split_table()
    moved.loc[2, "split"] = "train"
    assert digest_of(moved) != base
    assert digest_of(prepare={**PREPARE, "resize": 256}) != base
    assert digest_of(context="val") != base


def test_logged_datasets_read_back_from_mlflow(tmp_path, mlflow_store, params):
    import mlflow

    split_path = tmp_path / "split.csv"
    split_table().to_csv(split_path, index=False)
    tracking.setup()
    with mlflow.start_run() as run:
        datasets.log_split_inputs(split_path, ("train", "val"), params)
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(by_context) == {"train", "val"}
    train = by_context["train"]
    assert train.name == tracking.data_version() and train.name.startswith("dsb2018-")
    assert train.digest == datasets.split_dataset(split_table(), "train", params["prepare"], tracking.data_md5(),
                                                  datasets.default_remote()).digest
    assert train.source_type == "dvc"
    source = json.loads(train.source)
    assert source["path"] == "data" and source["md5"] == tracking.data_md5()
    assert source["remote"].startswith("shared: ")  # the checkout's default DVC remote
    assert json.loads(train.profile)["num_rows"] == 3  # the three training rows
    assert by_context["val"].digest != train.digest


def test_experiment_opens_on_training_runs(mlflow_store):
    import mlflow

    tracking.setup()
    experiment = mlflow.get_experiment_by_name("nucseg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_lineage_names_the_data_version():
    tags = tracking.lineage_tags()
    assert tags["data_version"] == f"dsb2018-{tags['data_md5'][:8]}"


@pytest.mark.parametrize("md5, name", [("09bbce523195f3330a178a73c3cf2e62.dir", "dsb2018-09bbce52"),
                                       ("unknown", "dsb2018-unknown")])
def test_data_version_names(md5, name):
    assert tracking.data_version(md5) == name
