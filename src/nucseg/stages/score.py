"""Stage `score`: segment new images with a registered segmenter and write what a user needs
from them: a Kaggle submission, per-image label maps and outline overlays, nucleus counts and
per-nucleus measurements (optionally QuPath-readable GeoJSON outlines).

Every setting of the segmentation comes with the model (its recipe), never from params.yaml.

One image that cannot be scored (unreadable, or any error while segmenting it) must not sink
a batch of thousands, so it is recorded (`errors.csv`, `ScoreResult.failed`) and the rest are
still scored; the CLI then exits non-zero so the failure is not missed. A failure to write
(a full disk) stops the run instead. Every output file is written atomically, and the tables of
an earlier run in the same folder are removed before the first new label is written: an
interrupted run leaves no half-written file, and no table describing other labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from nucseg import config, io
from nucseg.core.image_outputs import UNKNOWN_MODALITY, ImageOutputs, overlay_of, score_file
from nucseg.core.measure import COLUMNS
from nucseg.core.quality import DEFAULT_QUALITY, check_quality
from nucseg.core.segment import Recipe, segment
from nucseg.mlops import tracking
from nucseg.mlops.model_uris import resolve
from nucseg.mlops.segmenter_model import count_nuclei, load_segmenter
from nucseg.config import get_logger

log = get_logger("nucseg.score")

DEFAULT_MODALITY_MODEL = "artifacts/modality_model.json"


class ModelUnavailable(RuntimeError):
    """The model URI cannot be loaded; the message names the URI and how to put a model there."""


@dataclass
class ScoreResult:
    scored: list[str] = field(default_factory=list)  # image ids
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, problem)


def load_model(model_uri: str, quality: str = DEFAULT_QUALITY) -> tuple[Any, Recipe, dict[str, str]]:
    """The segmenter (network, and recipe at `quality`) behind an MLflow URI, and a record of
    which registry version it is and at which quality it scores.

    A `models:/name@alias` URI is pinned to the version the alias names *now* and that version
    is loaded, so the record names exactly the model that scored even if the alias moves during
    the run. MLflow's many failure types become one `ModelUnavailable` the CLI can print.
    """
    from mlflow.exceptions import MlflowException

    check_quality(quality)
    tracking.setup(create=False)
    try:
        source = resolve(model_uri)
        network, recipe = load_segmenter(source["loaded_uri"], quality=quality)
    except (MlflowException, OSError, ValueError) as err:
        reason = (getattr(err, "message", "") or str(err) or type(err).__name__).splitlines()[0].rstrip(".")
        raise ModelUnavailable(
            f"cannot load model {model_uri}: {reason}. "
            "Register and promote a model with `dvc repro promote` (`dvc repro -f promote` where DVC says it is "
            "up to date: this tracking store is not the one it registered into), or pass another --model-uri.") from err
    source["quality"] = quality
    log.info("scoring with %s, recipe %s", source, recipe)
    return network, recipe, source


def load_modality_model(path: str | Path) -> dict[str, Any] | None:
    """The fitted modality k-means, or None when the `modality` stage has not produced it:
    counts then say "unknown" instead of scoring failing for a nice-to-have column. A relative
    path is the project's (scoring may run from a folder below it)."""
    path = Path(path) if Path(path).is_absolute() else config.ROOT / path
    if not path.is_file():
        log.warning("%s not found: modality will be %r (run `dvc repro modality` to fit it)", path, UNKNOWN_MODALITY)
        return None
    return json.loads(path.read_text())


ENGINES = ("local", "spark")


def run(model_uri: str, input_dir: str | Path, output_dir: str | Path, params: dict[str, Any],
        geojson: bool = False, engine: str = "local", master: str = "local[2]",
        diameter: float | None = None, quality: str = DEFAULT_QUALITY) -> ScoreResult:
    """Score every image of `input_dir` (DSB layout or flat) into `output_dir`; see module doc.
    `params` only says where the modality model is; the segmentation settings are the model's.
    `diameter`: the nuclei's width in pixels, when the user knows it; else each image's is estimated.
    `quality`: `core.quality`'s level (the test-time views), `default` being the model's own.

    `engine="spark"` scores on Spark (`master`: `local[N]` or a cluster URL): executors segment,
    draw and measure, and this process writes what comes back, the same files as the local engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_quality(quality)
    images = io.find_images(input_dir)  # raises FileNotFoundError naming a missing folder
    if not images:
        raise FileNotFoundError(f"{input_dir}: no images ({', '.join(io.IMAGE_SUFFIXES)}) found")
    output_dir = Path(output_dir)
    network, recipe, source = load_model(model_uri, quality)
    _remove_tables(output_dir)
    modality_model = load_modality_model(params.get("score", {}).get("modality_model", DEFAULT_MODALITY_MODEL))
    if engine == "spark":
        from nucseg.mlops.spark_engine import score_with_spark

        log.info("score: scoring %d image(s) on Spark (%s)", len(images), master)
        on_spark = score_with_spark(images, source["loaded_uri"], modality_model, geojson, master, diameter,
                                    quality=quality)
    result, rows, counts, measurements = ScoreResult(), [], [], []
    for image_id, path in tqdm(images, desc=f"score: {'writing' if engine == 'spark' else 'scoring'} images",
                               unit="image"):
        try:
            outputs = _from_spark(on_spark[image_id], path) if engine == "spark" else \
                score_file(image_id, path, network, recipe, modality_model, geojson, diameter)
        except Exception as err:  # noqa: BLE001 - one bad image never sinks the batch
            problem = io.problem_of(err)
            log.error("not scored: %s: %s", path, problem)
            result.failed.append((str(path), problem))
            continue
        _write_image_outputs(output_dir, outputs)
        rows += outputs.submission
        measurements.append(outputs.measurements.assign(ImageId=image_id))
        nuclei = outputs.measurements
        counts.append({"ImageId": image_id, "nuclei": len(nuclei),
                       "mean_area_px": round(float(nuclei["area"].mean()), 2) if len(nuclei) else 0.0,
                       "modality": outputs.modality, "diameter_px": round(outputs.size.diameter, 2),
                       "scale": round(outputs.size.factor, 4)})
        result.scored.append(image_id)
    _write_tables(output_dir, rows, counts, measurements, result.failed, source)
    log.info("scored %d image(s) into %s; %d failed", len(result.scored), output_dir, len(result.failed))
    return result


def _from_spark(result: ImageOutputs | str, path: Path) -> ImageOutputs:
    if isinstance(result, str):
        raise io.ImageError(path, result)
    return result


def _write_image_outputs(output_dir: Path, outputs: ImageOutputs) -> None:
    io.atomic_write_bytes(output_dir / "labels" / f"{outputs.image_id}.png", outputs.labels_png)
    io.atomic_write_bytes(output_dir / "overlays" / f"{outputs.image_id}.png", outputs.overlay_png)
    if outputs.outlines is not None:
        io.write_json(output_dir / "outlines" / f"{outputs.image_id}.geojson", outputs.outlines)


MEASUREMENT_COLUMNS = ["ImageId", *COLUMNS]
# diameter_px: the nuclei's median width as estimated (or given); scale: the factor the image was
# resized by before the network, so nuclei reached the size it was trained at.
COUNT_COLUMNS = ["ImageId", "nuclei", "mean_area_px", "modality", "diameter_px", "scale"]
TABLES = ("submission.csv", "counts.csv", "measurements.csv", "model.json", "errors.csv")


def _remove_tables(output_dir: Path) -> None:
    for name in TABLES:
        (output_dir / name).unlink(missing_ok=True)


def _write_tables(output_dir: Path, rows, counts, measurements, failed, source: dict[str, str]) -> None:
    """The run's tables, all written together at the end, so they always describe the same run;
    `errors.csv` exists only when something failed, so a stale one from an earlier run in the
    same folder is removed rather than left to mislead."""
    io.write_csv(output_dir / "submission.csv", pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]))
    io.write_csv(output_dir / "counts.csv",
                 pd.DataFrame(counts, columns=COUNT_COLUMNS))
    table = pd.concat(measurements, ignore_index=True) if measurements else pd.DataFrame()
    io.write_csv(output_dir / "measurements.csv", table.reindex(columns=MEASUREMENT_COLUMNS).round(4))
    io.write_json(output_dir / "model.json", source)
    errors = output_dir / "errors.csv"
    if failed:
        io.write_csv(errors, pd.DataFrame(failed, columns=["path", "problem"]))
    else:
        errors.unlink(missing_ok=True)


def predict_one(model_uri: str, image_path: str | Path, output_dir: str | Path, diameter: float | None = None,
                quality: str = DEFAULT_QUALITY) -> int:
    """Segment one image into `<id>_labels.png` and `<id>_overlay.png`; returns its nucleus count.

    The image is read before the model is loaded, so a bad file fails fast with `io.ImageError`.
    """
    image_path, output_dir = Path(image_path), Path(output_dir)
    check_quality(quality)
    image = io.read_image(image_path)
    network, recipe, _ = load_model(model_uri, quality)
    labels, size = segment(network, image, recipe, diameter)
    image_id = io.image_id_of(image_path)
    io.write_png(output_dir / f"{image_id}_labels.png", labels)
    io.write_png(output_dir / f"{image_id}_overlay.png", overlay_of(image, labels, recipe, size))
    return count_nuclei(labels)
