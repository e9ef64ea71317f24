"""Stage `score`: segment new images with a registered model and write what a user needs from
them: a Kaggle submission, per-image label maps and outline overlays, and nucleus counts.

One unreadable image must not sink a batch of thousands, so it is recorded (`errors.csv`,
`ScoreResult.failed`) and the rest are still scored; the CLI then exits non-zero so the failure
is not missed. Every output file is written atomically, so an interrupted run leaves no
half-written file under its final name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg import io
from nucseg.core import modality, rle
from nucseg.core.evaluation import segment
from nucseg.core.overlay import draw_outlines
from nucseg.mlops import tracking
from nucseg.config import get_logger

log = get_logger("nucseg.score")

DEFAULT_MODALITY_MODEL = "artifacts/modality_model.json"
UNKNOWN_MODALITY = "unknown"
MODELS_SCHEME = "models:/"


class ModelUnavailable(RuntimeError):
    """The model URI cannot be loaded; the message names the URI and how to put a model there."""


@dataclass
class ScoreResult:
    scored: list[str] = field(default_factory=list)  # image ids
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, problem)


def load_model(model_uri: str) -> tuple[Any, dict[str, str]]:
    """The Keras model behind an MLflow URI, and a record of which registry version it is.

    A `models:/name@alias` URI is pinned to the version the alias names *now* and that version
    is loaded, so the record names exactly the model that scored even if the alias moves during
    the run. MLflow's many failure types become one `ModelUnavailable` the CLI can print.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.setup()
    try:
        source = _resolve(model_uri)
        model = mlflow.keras.load_model(source["loaded_uri"])
    except (MlflowException, OSError) as err:
        reason = (getattr(err, "message", "") or str(err) or type(err).__name__).splitlines()[0].rstrip(".")
        raise ModelUnavailable(
            f"cannot load model {model_uri}: {reason}. "
            "Register and promote a model with `dvc repro promote`, or pass another --model-uri.") from err
    log.info("scoring with %s", source)
    return model, source


def _resolve(model_uri: str) -> dict[str, str]:
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


def segment_image(model, image: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """uint16 labels and the uint8 RGB outline overlay of one image as read from disk.

    The overlay is drawn on the percentile-normalised image, so dim 16-bit or dark
    fluorescence images are visible in it.
    """
    prep = params["prepare"]
    normalised = io.normalize_image(image, float(prep["normalize_low"]), float(prep["normalize_high"]))
    labels, _ = segment(model, normalised, params)
    overlay = draw_outlines(np.round(normalised * 255).astype(np.uint8), labels)
    return labels.astype(np.uint16), overlay


def nucleus_stats(labels: np.ndarray) -> tuple[int, float]:
    """Number of nuclei and their mean area in pixels (0 when there are none)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return int(areas.size), round(float(areas.mean()), 2) if areas.size else 0.0


def load_modality_model(path: str | Path) -> dict[str, Any] | None:
    """The fitted modality k-means, or None when the `modality` stage has not produced it:
    counts then say "unknown" instead of scoring failing for a nice-to-have column."""
    path = Path(path)
    if not path.is_file():
        log.warning("%s not found: modality will be %r (run `dvc repro modality` to fit it)", path, UNKNOWN_MODALITY)
        return None
    return json.loads(path.read_text())


def modality_of(model: dict[str, Any] | None, image: np.ndarray) -> str:
    return modality.predict(model, modality.image_features(image))[0] if model else UNKNOWN_MODALITY


def run(model_uri: str, input_dir: str | Path, output_dir: str | Path, params: dict[str, Any]) -> ScoreResult:
    """Score every image of `input_dir` (DSB layout or flat) into `output_dir`; see module doc."""
    images = io.find_images(input_dir)  # raises FileNotFoundError naming a missing folder
    if not images:
        raise FileNotFoundError(f"{input_dir}: no images ({', '.join(io.IMAGE_SUFFIXES)}) found")
    output_dir = Path(output_dir)
    model, source = load_model(model_uri)
    modality_model = load_modality_model(params.get("score", {}).get("modality_model", DEFAULT_MODALITY_MODEL))
    result, rows, counts = ScoreResult(), [], []
    for image_id, path in tqdm(images, desc="score: segmenting images", unit="image"):
        try:
            image = io.read_image(path)
        except io.ImageError as err:
            log.error("not scored: %s", err)
            result.failed.append((err.path, err.problem))
            continue
        labels, overlay = segment_image(model, image, params)
        io.write_png(output_dir / "labels" / f"{image_id}.png", labels)
        io.write_png(output_dir / "overlays" / f"{image_id}.png", overlay)
        rows += rle.submission_rows(image_id, labels)
        count, mean_area = nucleus_stats(labels)
        counts.append({"ImageId": image_id, "nuclei": count, "mean_area_px": mean_area,
                       "modality": modality_of(modality_model, image)})
        result.scored.append(image_id)
    _write_tables(output_dir, rows, counts, result.failed, source)
    log.info("scored %d image(s) into %s; %d failed", len(result.scored), output_dir, len(result.failed))
    return result


def _write_tables(output_dir: Path, rows, counts, failed, source: dict[str, str]) -> None:
    """The run's tables; `errors.csv` exists only when something failed, so a stale one from an
    earlier run in the same folder is removed rather than left to mislead."""
    io.write_csv(output_dir / "submission.csv", pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]))
    io.write_csv(output_dir / "counts.csv",
                 pd.DataFrame(counts, columns=["ImageId", "nuclei", "mean_area_px", "modality"]))
    io.write_json(output_dir / "model.json", source)
    errors = output_dir / "errors.csv"
    if failed:
        io.write_csv(errors, pd.DataFrame(failed, columns=["path", "problem"]))
    else:
        errors.unlink(missing_ok=True)


def predict_one(model_uri: str, image_path: str | Path, output_dir: str | Path, params: dict[str, Any]) -> int:
    """Segment one image into `<id>_labels.png` and `<id>_overlay.png`; returns its nucleus count.

    The image is read before the model is loaded, so a bad file fails fast with `io.ImageError`.
    """
    image_path, output_dir = Path(image_path), Path(output_dir)
    image = io.read_image(image_path)
    model, _ = load_model(model_uri)
    labels, overlay = segment_image(model, image, params)
    image_id = io.image_id_of(image_path)
    io.write_png(output_dir / f"{image_id}_labels.png", labels)
    io.write_png(output_dir / f"{image_id}_overlay.png", overlay)
    return nucleus_stats(labels)[0]
