"""Model URIs as users and stages give them: the registry version a `models:/name@alias` names
now (so a run records exactly the model that scored, even if the alias moves meanwhile), the
segmenter loaded from it, and the champion a promotion report names."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nucseg import config
from nucseg.config import get_logger
from nucseg.core.quality import DEFAULT_QUALITY, at_quality, check_quality
from nucseg.core.segment import Recipe
from nucseg.mlops import tracking

log = get_logger("nucseg.score")

MODELS_SCHEME = "models:/"
CHAMPION_URI = f"{MODELS_SCHEME}{config.REGISTERED_MODEL}@champion"


def promoted_model_uri(promotion_path: str | Path) -> str:
    """`models:/<name>/<version>` of the champion a promotion report names: in production the
    version `champion` points at, under `dvc exp run` the one the experiment would make champion."""
    try:
        version = int(json.loads(Path(promotion_path).read_text())["champion_version"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{promotion_path}: not found; run `dvc repro promote` first") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{promotion_path}: expected a promotion report with champion_version ({err!r})") from err
    return f"{MODELS_SCHEME}{config.REGISTERED_MODEL}/{version}"


def resolve(model_uri: str) -> dict[str, str]:
    """Registry name, version and run behind a `models:/name@alias` or `models:/name/<version>`
    URI; any other URI is recorded and loaded as given."""
    from mlflow import MlflowClient

    record = {"model_uri": model_uri, "loaded_uri": model_uri}
    name, alias, version = _parse_models_uri(model_uri)
    if not name:
        return record
    client = MlflowClient()
    found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    record.update(name=found.name, version=str(found.version), run_id=found.run_id or "",
                  loaded_uri=f"{MODELS_SCHEME}{found.name}/{found.version}")
    return record


def _parse_models_uri(model_uri: str) -> tuple[str, str, str]:
    """(name, alias, version) of a registry URI; name is "" for URIs naming no fixed version
    or alias (runs:/, paths, models:/name/latest, logged-model ids)."""
    if not model_uri.startswith(MODELS_SCHEME):
        return "", "", ""
    body = model_uri[len(MODELS_SCHEME):]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, ""
    name, _, version = body.rpartition("/")
    return (name, "", version) if name and version.isdigit() else ("", "", "")


class ModelUnavailable(RuntimeError):
    """The model URI cannot be loaded; the message names the URI and how to put a model there."""


def pinned(model_uri: str, quality: str = DEFAULT_QUALITY) -> dict[str, str]:
    """The record of which registry version `model_uri` names now (`resolve`) and at which quality
    it scores, without loading it: what every worker of a batch then loads."""
    check_quality(quality)
    tracking.setup(create=False)
    with _unavailable(model_uri):
        source = resolve(model_uri)
    source["quality"] = quality
    return source


def load_model(model_uri: str, quality: str = DEFAULT_QUALITY, threads: int = 0) -> tuple[Any, Recipe, dict[str, str]]:
    """The segmenter (network, and recipe at `quality`) behind an MLflow URI, and a record of
    which registry version it is and at which quality it scores.

    A `models:/name@alias` URI is pinned to the version the alias names *now* and that version
    is loaded, so the record names exactly the model that scored even if the alias moves during
    the run. MLflow's many failure types become one `ModelUnavailable` the CLI can print.
    `threads`: ONNX Runtime's threads (0: one per core; 1 where a process per core scores).
    """
    source = pinned(model_uri, quality)
    with _unavailable(model_uri):
        network, recipe = segmenter_at(source["loaded_uri"], quality, threads)
    log.info("scoring with %s, recipe %s", source, recipe)
    return network, recipe, source


def segmenter_at(model_uri: str, quality: str, threads: int) -> tuple[Any, Recipe]:
    """The network and recipe at `quality` of a segmenter at an already pinned URI."""
    from nucseg.mlops.segmenter_model import load_segmenter

    if not threads:
        return load_segmenter(model_uri, quality=quality)
    import mlflow

    segmenter = mlflow.pyfunc.load_model(model_uri, model_config={"threads": threads}).unwrap_python_model()
    if not hasattr(segmenter, "stored_recipe"):
        raise ValueError(f"{model_uri} is a bare network without a segmentation recipe; register a segmenter")
    return segmenter.network, at_quality(segmenter.stored_recipe, quality)


@contextmanager
def _unavailable(model_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError, ValueError) as err:
        reason = (getattr(err, "message", "") or str(err) or type(err).__name__).splitlines()[0].rstrip(".")
        raise ModelUnavailable(
            f"cannot load model {model_uri}: {reason}. "
            "Register and promote a model with `dvc repro promote` (`dvc repro -s -f promote` where DVC says it is "
            "up to date: this tracking store is not the one it registered into), or pass another --model-uri.") from err
