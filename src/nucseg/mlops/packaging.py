"""A trained network becomes the segmenter users get (`segmenter_model`): the network from its
training stage's own output (`models/<name>/model.keras`) with the recipe chosen for it on `val`
(`calibration.chosen_recipe`), exported to ONNX and int8 where that keeps its `val` DSB, logged
once as an MLflow pyfunc into the run that trained it. `evaluate`, `promote`, the registry and
`score` all use this package, so what was measured is what is served."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from nucseg import config
from nucseg.config import get_logger
from nucseg.core import maps_cache
from nucseg.core.evaluation import evaluate_model, summarize
from nucseg.core.runtime import calibration_crops, load_keras
from nucseg.core.segment import Recipe
from nucseg.mlops.logged_models import log_recipe
from nucseg.mlops.segmenter_model import Int8Check, log_segmenter, recipe_digest

log = get_logger("nucseg.packaging")


class PackagingError(RuntimeError):
    """A network cannot be packaged (no such file or run); the message names which."""


def read_run_info(path: Path) -> tuple[str, str]:
    """(run_id, model_uri) a training or tuning stage left behind."""
    try:
        info = json.loads(path.read_text())
        return info["run_id"], info["model_uri"]
    except FileNotFoundError as err:
        raise PackagingError(f"{path}: not found; run the stage that trains this model first") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PackagingError(f"{path}: expected JSON with run_id and model_uri ({err!r})") from err


def read_recipe(path: Path) -> Recipe:
    """The recipe (thresholds chosen on val) the `package` stage chose for a network (its record's `recipe`)."""
    try:
        return Recipe.from_dict(json.loads(path.read_text())["recipe"])
    except FileNotFoundError as err:
        raise PackagingError(f"{path}: not found; run `dvc repro package` first") from err
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise PackagingError(f"{path}: no segmentation recipe in it ({err!r})") from err


def int8_check(train_images: list, val_samples: list[dict[str, Any]], recipe: Recipe, label: str,
               crops: int, crop_size: int) -> Int8Check:
    """An int8 network of `label` is calibrated on `crops` crops of the training images and must
    keep its `val` DSB with `recipe`."""

    def dsb_of(network) -> float:
        network = maps_cache.cached(network)  # `evaluate` scores `val` with the network kept
        per_image, _ = evaluate_model(network, val_samples, recipe, desc=f"package {label} int8 check: val")
        log.info("package %s int8 check: %s", label, network.summary())
        return summarize(per_image)["overall"]["dsb"]

    return Int8Check(calibration_crops(train_images, crop_size, crops), dsb_of)


def package(client, run_id: str, network_path: str | Path, recipe: Recipe,
            int8_offer: Callable[[], Int8Check] | None = None,
            choice: tuple[pd.DataFrame, dict[str, float]] | None = None) -> str:
    """URI of the segmenter (the network at `network_path` + `recipe`, and an int8 network where
    the check `int8_offer()` builds keeps it) logged into the training run `run_id`, with how its
    recipe was chosen (`choice`: every threshold candidate, and val DSB). Logged once per network
    file, recipe and int8 offer: a rerun finds it by its run tag, logs nothing new and builds no
    int8 check."""
    import mlflow

    network_path = Path(network_path)
    try:
        digest = hashlib.sha256(network_path.read_bytes()).hexdigest()[:12]
    except OSError as err:
        raise PackagingError(f"{network_path}: cannot read the trained network ({err.strerror or err}); "
                             "run the stage that trains it first") from err
    tag = f"segmenter.{digest}.{recipe_digest(recipe)}.{'int8' if int8_offer else 'float'}"
    try:
        existing = client.get_run(run_id).data.tags.get(tag)
    except Exception as err:  # noqa: BLE001 - a missing run or store: the run is what the user must fix
        raise PackagingError(f"MLflow run {run_id} (from {network_path.parent / 'run.json'}) not found in "
                             f"{config.tracking_uri()}: {err}") from err
    if existing:
        log.info("%s is packaged already: %s", network_path, existing)
        return existing
    network = load_keras(network_path)
    with mlflow.start_run(run_id=run_id):
        uri = log_segmenter(network, recipe, int8=int8_offer() if int8_offer else None)
        if choice:
            log_recipe(recipe, *choice)
        mlflow.set_tag(tag, uri)
    log.info("logged the segmenter of %s into run %s: %s", network_path, run_id, uri)
    return uri
