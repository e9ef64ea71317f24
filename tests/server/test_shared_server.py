"""The team's shared tracking server: a real PostgreSQL database and a real `mlflow server` with
proxied artifacts, started by the documented script, and the whole pipeline run against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_project, pipeline_env, query, sh

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def project_on_server(tracking_server, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("project")
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": tracking_server.url}
    build_project(project, env)
    sh("dvc", "repro", cwd=project, env=env)
    return project


def test_every_stage_logs_to_the_server(tracking_server, project_on_server):
    import mlflow

    client = mlflow.MlflowClient(tracking_server.url, registry_uri=tracking_server.url)
    assert not (project_on_server / "mlflow.db").exists()  # nothing went to a local store

    stages = {stage for (stage,) in query(tracking_server, "SELECT value FROM tags WHERE key = 'stage'")}
    assert stages == {"train", "tune", "promote"}
    finished = query(tracking_server, "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0]
    assert finished >= 4  # untuned, tune parent + trials, tuned, promote

    champion = client.get_model_version_by_alias("nucseg-unet", "champion")
    assert query(tracking_server, "SELECT count(*) FROM model_versions WHERE name = 'nucseg-unet'")[0][0] == 2
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients never touch the disk
    assert list(tracking_server.artifacts.rglob("recipe.json"))  # ... which is the server's

    scored = json.loads((project_on_server / "outputs" / "stage1_test" / "model.json").read_text())
    assert scored["version"] == str(champion.version)
