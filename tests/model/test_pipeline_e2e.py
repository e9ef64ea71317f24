"""The real pipeline end to end: real DVC, MLflow sqlite store and Great Expectations on a few real
images with one short epoch, in a temporary copy of the project; then the MLflow UI in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, N_TEST, build_project, free_port, pipeline_env, sh, wait_until_up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A temporary project run twice with `dvc repro`, logging to its own sqlite store."""
    project = tmp_path_factory.mktemp("project")
    env = pipeline_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: sqlite:///mlflow.db in the project
    build_project(project, env)
    first = sh("dvc", "repro", cwd=project, env=env)
    (project / "repro.log").write_text(first.stdout + first.stderr)
    second = sh("dvc", "repro", cwd=project, env=env)
    (project / "second_repro.log").write_text(second.stdout)
    return project


def use_store(project: Path) -> None:
    """Both URIs: an earlier test in this process may have pointed the registry elsewhere."""
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def test_pipeline_ends_with_champion_and_submission(pipeline):
    import mlflow

    from nucseg.core.rle import rle_decode

    use_store(pipeline)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='nucseg-unet'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias("nucseg-unet", "champion")
    challenger = client.get_model_version_by_alias("nucseg-unet", "challenger")
    assert champion.version != challenger.version
    assert {"data_md5", "git_commit"} <= set(champion.tags)
    # the training nucleus size, the promotion gate's verdict, the shifted copies and unseen types
    assert float(champion.tags["nucleus_diameter"]) > 0
    assert champion.tags["gate"].startswith(("passed", "reference"))
    assert {"dsb_x2", "dsb_darker", "unseen_type_dsb_mean"} <= set(champion.tags)
    untuned_run = client.get_run(json.loads((pipeline / "models" / "untuned" / "run.json").read_text())["run_id"])
    assert {"test_x2_dsb", "test_darker_dsb"} <= set(untuned_run.data.metrics)

    submission = pd.read_csv(pipeline / "outputs" / "stage1_test" / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels"]
    test_ids = sorted(p.name for p in (pipeline / "data" / "stage1_test").iterdir())
    assert sorted(submission["ImageId"].unique()) == test_ids
    for row in submission.itertuples():
        if row.EncodedPixels:
            rle_decode(row.EncodedPixels, (4000, 4000))  # well-formed runs
    assert len(list((pipeline / "outputs" / "stage1_test" / "labels").glob("*.png"))) == N_TEST

    split = pd.read_csv(pipeline / "artifacts" / "split.csv")
    assert {"id", "group", "split", "modality"} <= set(split.columns)
    assert set(split["split"]) == {"train", "val", "test"}
    assert (split.groupby("group")["split"].nunique() == 1).all()
    assert champion.tags["data_version"].startswith("dsb2018-")

    for metric in ("data_summary", "split_summary", "eval_metrics", "promotion", "tune_metrics", "train_metrics",
                   "unseen_types"):
        assert (pipeline / "reports" / f"{metric}.json").exists(), metric
    second = (pipeline / "second_repro.log").read_text()
    for stage in ("validate", "train", "package@untuned", "evaluate", "unseen_fold@histology", "unseen", "tune",
                  "package@tuned", "promote", "score"):
        assert f"Stage '{stage}' didn't change, skipping" in second, stage
    assert "MLflow store: {'store': 'sqlite:///" in second  # the only stage run again: the store check


def test_a_lost_mlflow_store_is_named_with_what_to_rebuild(pipeline):
    env = pipeline_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    store = pipeline / "mlflow.db"
    store.rename(pipeline / "mlflow.db.kept")
    try:
        repro = subprocess.run(["dvc", "repro"], cwd=pipeline, env=env, capture_output=True, text=True)
    finally:
        (pipeline / "mlflow.db.kept").rename(store)
    output = repro.stdout + repro.stderr
    assert repro.returncode != 0 and "Traceback" not in output
    assert f"the MLflow store sqlite:///{store} lacks what the pipeline logged there: run " in output
    assert "(models/untuned/run.json, stage train)" in output and "stage promote" in output
    assert "`dvc repro -s -f train tune`, then `dvc repro`" in output


@pytest.mark.parametrize("change, rerun", [
    (("search", "min_object_area"), {"package@untuned", "package@tuned", "unseen", "promote"}),
    (("fg_threshold",), {"package@untuned", "package@tuned", "unseen", "promote", "tune"}),  # tune ranks by it
])
def test_a_postprocess_change_trains_nothing_it_need_not(pipeline, change, rerun):
    """What `dvc status` says a post-processing change invalidates: the stages that choose
    thresholds or score with them; no training but the tuner's search, whose objective uses them."""
    import yaml

    params_file = pipeline / "params.yaml"
    kept = params_file.read_text()
    params = yaml.safe_load(kept)
    if change[0] == "search":
        params["postprocess"]["search"][change[1]] = [7, 13]
    else:
        params["postprocess"][change[0]] = 0.42
    params_file.write_text(yaml.safe_dump(params))
    try:
        status = json.loads(sh("dvc", "status", "--json", cwd=pipeline, env=pipeline_env()).stdout)
    finally:
        params_file.write_text(kept)
    assert set(status) - {"store_check"} == rerun
    assert not {"train", "unseen_fold@histology"} & set(status)


@pytest.fixture(scope="module")
def mlflow_server(pipeline):
    port = free_port()
    log = open(pipeline / "mlflow_server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{pipeline / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=pipeline, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", server, pipeline / "mlflow_server.log", "mlflow server", timeout=90)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("Debian chromium and chromium-driver are required (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, *texts: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))
    return driver.find_element(By.TAG_NAME, "body").text


def test_mlflow_ui_shows_runs_champion_and_overlays(pipeline, mlflow_server, browser, tmp_path):
    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    use_store(pipeline)
    experiment = mlflow.get_experiment_by_name("nucseg")
    untuned = mlflow.search_runs([experiment.experiment_id], filter_string="tags.model_kind = 'untuned'",
                                 output_format="list")[0]
    shots = tmp_path  # screenshots for a person debugging a failure, never into the tracked tree

    # The experiment is of the model-training kind. MLflow 3.17's UI picks an experiment's landing
    # page from its GenAI / Model training switch (default GenAI), so the README's link sets it.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    browser.get(f"{mlflow_server}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
    text = wait_for_text(browser, "untuned", "tuned", "promote", "Dataset")
    assert "/runs" in browser.current_url  # the runs table, not MLflow 3's GenAI overview of traces
    train_input = next(i.dataset for i in untuned.inputs.dataset_inputs
                       if any(t.key == "mlflow.data.context" and t.value == "train" for t in i.tags))
    assert train_input.name == untuned.data.tags["data_version"]
    assert f"{train_input.name} ({train_input.digest})" in text  # the Datasets column: which data, which digest
    browser.save_screenshot(str(shots / "mlflow_ui_experiment.png"))

    browser.get(f"{mlflow_server}/#/experiments")  # chosen once, "Model training" sticks
    click_text(browser, "Model training")
    time.sleep(1)
    browser.get(f"{mlflow_server}/#/experiments/{experiment.experiment_id}")  # a plain link, no parameter
    WebDriverWait(browser, 60).until(lambda d: f"/experiments/{experiment.experiment_id}/runs" in d.current_url)
    wait_for_text(browser, "untuned", "promote")

    browser.get(f"{mlflow_server}/#/models/nucseg-unet")
    wait_for_text(browser, "nucseg-unet", "champion", "challenger")
    browser.save_screenshot(str(shots / "mlflow_ui_model.png"))

    browser.get(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{untuned.info.run_id}/artifacts")
    wait_for_text(browser, "Artifacts", "overlays", "plots")
    overlay = mlflow.MlflowClient().list_artifacts(untuned.info.run_id, "overlays")[0].path  # overlays/<modality>
    image = mlflow.MlflowClient().list_artifacts(untuned.info.run_id, overlay)[0].path
    for name in (*overlay.split("/"), image.split("/")[-1]):
        click_text(browser, name)
    wait_for_text(browser, f"{overlay}/")  # the preview's title: the artifact path
    WebDriverWait(browser, 60).until(  # the preview itself, an image as wide as the 3-panel overlay
        lambda d: any(img.size["width"] > 300 for img in d.find_elements(By.TAG_NAME, "img")))
    browser.save_screenshot(str(shots / "mlflow_ui_overlay.png"))


def click_text(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait_for_text(driver, text)
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.XPATH, f"//*[normalize-space(text())='{text}']")).click()


# ---- last: these change the project's registry and workspace ----

def test_dvc_experiment_leaves_production_aliases_alone(pipeline):
    import json

    import mlflow

    use_store(pipeline)
    client = mlflow.MlflowClient()
    versions = {alias: int(client.get_model_version_by_alias("nucseg-unet", alias).version)
                for alias in ("champion", "challenger")}
    # Production serves the other model (as if an older one were champion): an experiment that
    # moved aliases would move `champion` back to the better candidate.
    client.set_registered_model_alias("nucseg-unet", "champion", versions["challenger"])
    client.set_registered_model_alias("nucseg-unet", "challenger", versions["champion"])
    env = pipeline_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ("git", "-c", "user.name=nucseg-test", "-c", "user.email=test@nucseg.invalid")
    sh(*git, "add", "-A", cwd=pipeline, env=env)
    sh(*git, "commit", "-q", "-m", "baseline", cwd=pipeline, env=env)
    baseline = sh("git", "rev-parse", "HEAD", cwd=pipeline, env=env).stdout.strip()
    sh("dvc", "exp", "run", "-n", "margin-check", "-S", "promote.margin=0.001", cwd=pipeline, env=env)

    assert client.get_registered_model("nucseg-unet").aliases == {
        "champion": versions["challenger"], "challenger": versions["champion"]}
    report = json.loads((pipeline / "reports" / "promotion.json").read_text())
    assert report["aliases_moved"] is False and report["dvc_experiment"] == "margin-check"
    assert report["champion_version"] == versions["champion"]  # what it would serve...
    scored = json.loads((pipeline / "outputs" / "stage1_test" / "model.json").read_text())
    assert scored["version"] == str(versions["champion"])  # ... is what the experiment's score stage scored
    [promote] = mlflow.search_runs(filter_string="tags.dvc_experiment = 'margin-check'", output_format="list",
                                   search_all_experiments=True)
    assert promote.data.tags["stage"] == "promote" and promote.data.tags["dvc_baseline"] == baseline
    assert "no alias moved" in (pipeline / "reports" / "promotion.md").read_text()


def test_mlflow_run_gives_each_stage_its_own_run(pipeline):
    import mlflow

    env = pipeline_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    sh(str(BIN / "mlflow"), "run", ".", "-e", "train", "--env-manager", "local", "--experiment-name", "nucseg",
       cwd=pipeline, env=env)
    use_store(pipeline)
    [launcher] = mlflow.search_runs(filter_string="tags.`mlflow.project.entryPoint` = 'train'", output_format="list",
                                    search_all_experiments=True)
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{launcher.info.run_id}'",
                                  output_format="list", search_all_experiments=True)
    assert [run.data.tags["stage"] for run in children] == ["train"]
    assert "val_loss" in children[0].data.metrics and "val_loss" not in launcher.data.metrics
