"""Everything scoring writes for one segmented image, computed where the image already is: in
process for the local engine, on the executor for Spark, so a cluster does the overlays and
measurements too and the driver only writes what comes back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucseg import io
from nucseg.core import modality, rle
from nucseg.core.measure import COLUMNS, measure, outlines_geojson
from nucseg.core.overlay import captioned, draw_outlines
from nucseg.core.preprocess import preprocess
from nucseg.core.scale import SizeEstimate
from nucseg.core.segment import Recipe, segment

UNKNOWN_MODALITY = "unknown"
DECIMALS = 4  # measurements are written with this many decimals

# Columns of `ImageOutputs.to_row`, as a Spark schema: rows cross the driver/executor boundary as
# plain types (measurements as JSON at full written precision).
ROW_SCHEMA = ("id string, labels binary, overlay binary, submission string, measurements string, "
              "modality string, diameter double, scale double, diameter_given boolean, outlines string, error string")


@dataclass
class ImageOutputs:
    image_id: str
    labels_png: bytes
    overlay_png: bytes
    submission: list[tuple[str, str]]  # (ImageId, EncodedPixels) rows
    measurements: pd.DataFrame  # one row per nucleus, `measure.COLUMNS`
    modality: str
    size: SizeEstimate  # nucleus diameter (image pixels) and the scale the network saw the image at
    outlines: dict[str, Any] | None = None  # GeoJSON, when asked for

    def to_row(self) -> dict[str, Any]:
        return {"id": self.image_id, "labels": self.labels_png, "overlay": self.overlay_png,
                "submission": json.dumps(self.submission), "measurements": self.measurements.to_json(
                    orient="split", index=False, double_precision=15),
                "modality": self.modality, "diameter": self.size.diameter, "scale": self.size.factor,
                "diameter_given": self.size.given, "outlines": json.dumps(self.outlines) if self.outlines else None,
                "error": ""}

    @classmethod
    def from_row(cls, row: Any) -> ImageOutputs:
        measurements = pd.read_json(StringIO(row.measurements), orient="split", dtype=False)
        return cls(row.id, bytes(row.labels), bytes(row.overlay), [tuple(r) for r in json.loads(row.submission)],
                   measurements, row.modality, SizeEstimate(row.diameter, row.scale, bool(row.diameter_given)),
                   json.loads(row.outlines) if row.outlines else None)


def overlay_of(image: np.ndarray, labels: np.ndarray, recipe: Recipe, size: SizeEstimate) -> np.ndarray:
    """uint8 RGB outlines drawn on the normalised image at its own size, so dim 16-bit or dark
    fluorescence images are visible in it, under a caption saying the size it was segmented at."""
    outlined = draw_outlines(preprocess(image, recipe.normalize_low, recipe.normalize_high), labels)
    return captioned(outlined, size_caption(labels, size))


def size_caption(labels: np.ndarray, size: SizeEstimate) -> str:
    nuclei = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    source = "given" if size.given else "estimated"
    return f"{nuclei} nuclei, diameter {size.diameter:.0f} px ({source}), segmented at x{size.factor:.2f}"


def modality_of(model: dict[str, Any] | None, image: np.ndarray) -> str:
    return modality.predict(model, modality.image_features(image))[0] if model else UNKNOWN_MODALITY


def image_outputs(image_id: str, image: np.ndarray, labels: np.ndarray, size: SizeEstimate, recipe: Recipe,
                  modality_model: dict[str, Any] | None, geojson: bool = False) -> ImageOutputs:
    """Outputs of `image` (as read) and its instance `labels`; `recipe` is the segmenter's, so
    the overlay shows the image as the network saw it."""
    return ImageOutputs(
        image_id=image_id, labels_png=io.encode_png(labels, image_id),
        overlay_png=io.encode_png(overlay_of(image, labels, recipe, size), image_id),
        submission=rle.submission_rows(image_id, labels),
        measurements=measure(labels, image).round(DECIMALS),
        modality=modality_of(modality_model, image), size=size,
        outlines=outlines_geojson(labels) if geojson else None)


def score_file(image_id: str, path: str | Path, network, recipe: Recipe, modality_model: dict[str, Any] | None,
               geojson: bool = False, diameter: float | None = None) -> ImageOutputs:
    """Read, segment and describe one image file: the per-image work of either scoring engine.
    `diameter`: the nuclei's width in pixels when the user knows it (else estimated)."""
    image = io.read_image(path)
    labels, size = segment(network, image, recipe, diameter)
    return image_outputs(image_id, image, labels, size, recipe, modality_model, geojson)


def score_or_problem(image_id: str, path: str | Path, network, recipe: Recipe,
                     modality_model: dict[str, Any] | None, geojson: bool = False,
                     diameter: float | None = None) -> tuple[ImageOutputs | None, str | None]:
    """`score_file`'s outputs, or what went wrong with the image in a line: one bad image never
    sinks a batch."""
    try:
        return score_file(image_id, path, network, recipe, modality_model, geojson, diameter), None
    except Exception as err:  # noqa: BLE001 - any failure is this image's, recorded and reported
        return None, io.problem_of(err)


def count_row(outputs: ImageOutputs) -> dict[str, Any]:
    """The image's row of `counts.csv`."""
    nuclei = outputs.measurements
    return {"ImageId": outputs.image_id, "nuclei": len(nuclei),
            "mean_area_px": round(float(nuclei["area"].mean()), 2) if len(nuclei) else 0.0,
            "modality": outputs.modality, "diameter_px": round(outputs.size.diameter, 2),
            "scale": round(outputs.size.factor, 4)}


def write_image_outputs(output_dir: Path, outputs: ImageOutputs) -> None:
    io.atomic_write_bytes(output_dir / "labels" / f"{outputs.image_id}.png", outputs.labels_png)
    io.atomic_write_bytes(output_dir / "overlays" / f"{outputs.image_id}.png", outputs.overlay_png)
    if outputs.outlines is not None:
        io.write_json(output_dir / "outlines" / f"{outputs.image_id}.geojson", outputs.outlines)


MEASUREMENT_COLUMNS = ["ImageId", *COLUMNS]
# diameter_px: the nuclei's median width as estimated (or given); scale: the factor the image was
# resized by before the network, so nuclei reached the size it was trained at.
COUNT_COLUMNS = ["ImageId", "nuclei", "mean_area_px", "modality", "diameter_px", "scale"]
TABLES = ("submission.csv", "counts.csv", "measurements.csv", "model.json", "errors.csv")


def remove_tables(output_dir: Path) -> None:
    for name in TABLES:
        (output_dir / name).unlink(missing_ok=True)


def write_tables(output_dir: Path, rows, counts, measurements, failed, source: dict[str, str]) -> None:
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
