"""The tuner's saved search resumes only when nothing its trials depend on changed: a rerun
with the same data, split and code continues it; new data, another split or other code start
a new search (and say why)."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import tiny_tune_params, write_synthetic_prepared
from nucseg import config
from nucseg.mlops import tuners
from nucseg.stages import tune


def dvc_pointer(md5: str) -> str:
    return f"outs:\n- md5: {md5}\n  path: data\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    write_synthetic_prepared(tmp_path / "artifacts")
    (tmp_path / "data.dvc").write_text(dvc_pointer("1111.dir"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(config, "ROOT", tmp_path)
    return tmp_path


def run_tune(root) -> dict:
    return tune.run(tiny_tune_params(algorithm="bayesian", max_trials=1, max_epochs=1), split_path=root / "artifacts" / "split.csv", samples_dir=root / "artifacts" / "prepared",
                    tuner_dir=root / "models" / "tuner", model_dir=root / "models" / "tuned",
                    metrics_path=root / "reports" / "tune_metrics.json", trials_path=root / "reports" / "tune_trials.csv")


def parent_run(root) -> str:
    import json

    return json.loads((root / "models" / "tuner" / tuners.STATE_FILE).read_text())["run_id"]


@pytest.mark.slow  # three real searches
def test_saved_search_resumes_only_on_the_same_data_split_and_code(project, caplog):
    assert run_tune(project)["trials_this_session"] == 1
    first = parent_run(project)
    assert run_tune(project)["trials_this_session"] == 0 and parent_run(project) == first  # resumed: nothing to do

    (project / "data.dvc").write_text(dvc_pointer("2222.dir"))  # another data version
    with caplog.at_level("WARNING"):
        assert run_tune(project)["trials_this_session"] == 1
    assert "settings changed" in caplog.text and "data_md5" in caplog.text
    second = parent_run(project)
    assert second != first

    split = pd.read_csv(project / "artifacts" / "split.csv")
    split.loc[split["split"] == "test", "split"] = "train"  # another split
    split.to_csv(project / "artifacts" / "split.csv", index=False)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert run_tune(project)["trials_this_session"] == 1
    assert "split" in caplog.text and parent_run(project) != second
