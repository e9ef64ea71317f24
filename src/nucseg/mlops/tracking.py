"""MLflow plumbing shared by training, tuning, promotion and scoring: where runs go, and the
lineage tags (data version, code version, DVC experiment, launching run) every run carries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from nucseg import config


# MLflow 3 opens an experiment without this tag on its GenAI overview of traces, empty for us
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PARENT_RUN_TAG = "mlflow.parentRunId"

# `mlflow run` opens a run and hands it to the entry point's command as MLFLOW_RUN_ID; every
# stage would then write into that one run. `setup` takes it out of the environment and each
# stage's runs become its children instead.
_launcher_run_id: str | None = None


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; the message names the URI."""


def setup(experiment: str = config.EXPERIMENT_NAME, create: bool = True) -> str:
    """Point MLflow at the project store (or $MLFLOW_TRACKING_URI) and fail fast if it is down.
    `create=False` (commands that only read, like scoring) refuses a local store that does not
    exist yet rather than leave an empty `mlflow.db` wherever the command was run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    global _launcher_run_id
    _launcher_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or _launcher_run_id
    uri = config.tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    if not create and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingUnavailable(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: run this inside the nucseg project (or a folder "
            "below it), or set MLFLOW_TRACKING_URI to the store or tracking server that holds the model")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not create:
        return uri
    # Several processes may start at once on a fresh server (a tuning chief and its workers):
    # creating the experiment or its tag can then race; whoever loses finds it done.
    if mlflow.get_experiment_by_name(experiment) is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    if mlflow.set_experiment(experiment).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        try:
            mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except MlflowException:
            if mlflow.get_experiment_by_name(experiment).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                raise
    return uri


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store live beside the database file, whatever the working
    directory (MLflow's default `./mlruns` would scatter them); servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def _check_server(uri: str) -> None:
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({err.__class__.__name__}). Start it, or unset "
            "MLFLOW_TRACKING_URI to log to the local sqlite store.") from err


def data_md5(dvc_file: str | Path | None = None) -> str:
    """md5 of the DVC-tracked raw data this run saw ("unknown" outside a DVC checkout)."""
    try:
        return yaml.safe_load(Path(dvc_file or config.ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    except (OSError, KeyError, IndexError, TypeError):
        return "unknown"


def git_commit() -> str:
    """Current commit, with a `-dirty` suffix when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=config.ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=config.ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def data_version(md5: str | None = None) -> str:
    """Short, readable name of a DVC data version: `dsb2018-<first 8 hex of the md5>`."""
    md5 = md5 or data_md5()
    return f"dsb2018-{md5[:8]}" if md5 != "unknown" else "dsb2018-unknown"


def dvc_experiment() -> tuple[str, str] | None:
    """(name, baseline commit) when running under `dvc exp run`, which sets these variables."""
    name = os.environ.get("DVC_EXP_NAME")
    return (name, os.environ.get("DVC_EXP_BASELINE_REV", "unknown")) if name else None


def lineage_tags() -> dict[str, str]:
    """Which data and code made a run, and what started it: a DVC experiment, `mlflow run`."""
    md5 = data_md5()
    tags = {"data_md5": md5, "data_version": data_version(md5), "git_commit": git_commit(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    experiment = dvc_experiment()
    if experiment:
        tags.update(dvc_experiment=experiment[0], dvc_baseline=experiment[1])
    if _launcher_run_id:
        tags[PARENT_RUN_TAG] = _launcher_run_id
    return tags


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"epochs": 3}}` → `{"train.epochs": 3}`, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
