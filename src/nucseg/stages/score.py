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

from tqdm import tqdm

from nucseg import config, io
from nucseg.config import get_logger
from nucseg.core.image_outputs import (UNKNOWN_MODALITY, ImageOutputs, count_row, overlay_of, remove_tables,
                                       score_or_problem, write_image_outputs, write_tables)
from nucseg.core.quality import DEFAULT_QUALITY, check_quality
from nucseg.core.segment import segment
from nucseg.mlops.model_uris import load_model, pinned
from nucseg.mlops.process_engine import default_workers, score_in_processes
from nucseg.mlops.segmenter_model import count_nuclei

log = get_logger("nucseg.score")

DEFAULT_MODALITY_MODEL = "artifacts/modality_model.json"


@dataclass
class ScoreResult:
    scored: list[str] = field(default_factory=list)  # image ids
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, problem)


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
        diameter: float | None = None, quality: str = DEFAULT_QUALITY, workers: int = 0) -> ScoreResult:
    """Score every image of `input_dir` (DSB layout or flat) into `output_dir`; see module doc.
    `params` only says where the modality model is; the segmentation settings are the model's.
    `diameter`: the nuclei's width in pixels, when the user knows it; else each image's is estimated.
    `quality`: `core.quality`'s level (the test-time views), `default` being the model's own.
    `workers`: processes of the local engine (`process_engine`; 0: one per core, 1: this process).

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
    workers = min(workers or default_workers(), len(images)) if engine == "local" else 1
    if workers > 1:
        source = pinned(model_uri, quality)
    else:
        network, recipe, source = load_model(model_uri, quality)
    remove_tables(output_dir)
    modality_model = load_modality_model(params.get("score", {}).get("modality_model", DEFAULT_MODALITY_MODEL))
    if engine == "spark":
        from nucseg.mlops.spark_engine import score_with_spark

        log.info("score: scoring %d image(s) on Spark (%s)", len(images), master)
        on_spark = score_with_spark(images, source["loaded_uri"], modality_model, geojson, master, diameter,
                                    quality=quality)
        scored = ((image_id, path, *_from_spark(on_spark[image_id])) for image_id, path in images)
    elif workers > 1:
        log.info("score: scoring %d image(s) in %d worker processes", len(images), workers)
        scored = score_in_processes(images, source["loaded_uri"], config.tracking_uri(), quality, modality_model, geojson, diameter, workers)
    else:
        scored = ((image_id, path, *score_or_problem(image_id, path, network, recipe, modality_model, geojson,
                                                     diameter)) for image_id, path in images)
    result, rows, counts, measurements = ScoreResult(), [], [], []
    for image_id, path, outputs, problem in tqdm(scored, total=len(images), unit="image",
                                                 desc=f"score: {'writing' if engine == 'spark' else 'scoring'} images"):
        if problem is not None:
            log.error("not scored: %s: %s", path, problem)
            result.failed.append((str(path), problem))
            continue
        write_image_outputs(output_dir, outputs)
        rows += outputs.submission
        measurements.append(outputs.measurements.assign(ImageId=image_id))
        counts.append(count_row(outputs))
        result.scored.append(image_id)
    write_tables(output_dir, rows, counts, measurements, result.failed, source)
    log.info("scored %d image(s) into %s; %d failed", len(result.scored), output_dir, len(result.failed))
    return result


def _from_spark(result: ImageOutputs | str) -> tuple[ImageOutputs | None, str | None]:
    return (None, result) if isinstance(result, str) else (result, None)


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
