"""The team's shared tracking server: a real PostgreSQL database and a real `mlflow server` with
proxied artifacts and users, started by the documented script; the whole pipeline run against it
as a member, then promotion as the promoter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BIN, build_project, query, sh

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def project_on_server(tracking_server, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("project")
    env = tracking_server.env("member")
    build_project(project, env)
    sh("dvc", "repro", cwd=project, env=env)
    return project


def test_a_member_runs_the_pipeline_and_registers_but_moves_no_alias(tracking_server, as_admin, project_on_server):
    import mlflow

    client = mlflow.MlflowClient(tracking_server.url, registry_uri=tracking_server.url)
    assert not (project_on_server / "mlflow.db").exists()  # nothing went to a local store

    stages = {stage for (stage,) in query(tracking_server, "SELECT value FROM tags WHERE key = 'stage'")}
    assert stages == {"train", "unseen", "tune", "promote"}
    finished = query(tracking_server, "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0]
    assert finished >= 5  # untuned, unseen types, tune parent + trials, tuned, promote
    report = json.loads((project_on_server / "reports" / "promotion.json").read_text())
    assert sorted(pipeline_versions(client, report)) == sorted(c["version"] for c in report["candidates"].values())
    assert len(pipeline_versions(client, report)) == 2  # each candidate registered once
    assert client.get_registered_model("nucseg-unet").aliases == {}  # the member may not move them ...

    assert report["aliases_moved"] is False
    assert "member" in report["aliases_refused"] and "promoter" in report["aliases_refused"]
    assert "A promoter moves them with `nucseg promote`" in (project_on_server / "reports" / "promotion.md").read_text()

    versions = client.search_model_versions("name = 'nucseg-unet'")
    run = client.get_run(versions[0].run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients never touch the disk
    assert list(tracking_server.artifacts.rglob("recipe.json"))  # ... which is the server's
    # ... and `score` scored the version the promotion chose
    scored = json.loads((project_on_server / "outputs" / "stage1_test" / "model.json").read_text())
    assert scored["version"] == str(report["champion_version"])


def test_the_promoter_moves_the_aliases(tracking_server, as_admin, project_on_server):
    import mlflow

    member_report = json.loads((project_on_server / "reports" / "promotion.json").read_text())
    client = mlflow.MlflowClient(tracking_server.url, registry_uri=tracking_server.url)
    registered = len(client.search_model_versions("name = 'nucseg-unet'"))
    sh(str(BIN / "nucseg"), "promote", cwd=project_on_server, env=tracking_server.env("promoter"))

    report = json.loads((project_on_server / "reports" / "promotion.json").read_text())
    assert report["aliases_moved"] is True and "aliases_refused" not in report
    assert report["champion_version"] == member_report["champion_version"]  # the same decision, now in force
    champion = client.get_model_version_by_alias("nucseg-unet", "champion")
    assert int(champion.version) == report["champion_version"]
    assert len(client.search_model_versions("name = 'nucseg-unet'")) == registered  # the member's versions, reused


def pipeline_versions(client, report) -> list[int]:
    """Registry versions made from this pipeline's runs (other tests register on the same server)."""
    runs = {candidate["run_id"] for candidate in report["candidates"].values()}
    return [int(v.version) for v in client.search_model_versions("name = 'nucseg-unet'") if v.run_id in runs]
