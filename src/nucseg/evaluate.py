"""Stage `evaluate`: whole-image instance segmentation of the `val` and `test` splits, scored as
the field scores it (DSB2018 metric), per image and per modality, logged into the training run.

`test` is the final report: nothing was chosen on it, so its DSB is the honest estimate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries
from tqdm import tqdm

from nucseg import datasets, io, metrics, tracking
from nucseg.config import get_logger
from nucseg.infer import predict_maps
from nucseg.postprocess import labels_from_maps

log = get_logger("nucseg.evaluate")

# Pads every image to a multiple of 32: enough for U-Nets up to depth 5 and the MobileNetV2
# encoder, so a model loaded from the registry needs no knowledge of how it was built.
INFERENCE_MULTIPLE = 32


def segment(model, image: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """uint16 instance labels and the HxWx2 probability maps for one float [0,1] RGB image."""
    inf = params["inference"]
    maps = predict_maps(model, image, multiple=INFERENCE_MULTIPLE, tile_size=int(inf["tile_size"]),
                        overlap=int(inf["tile_overlap"]), max_untiled_pixels=int(inf["max_untiled_pixels"]))
    pp = params["postprocess"]
    labels = labels_from_maps(maps[..., 0], maps[..., 1], fg_threshold=pp["fg_threshold"],
                              marker_threshold=pp["marker_threshold"], border_threshold=pp["border_threshold"],
                              min_marker_area=int(pp["min_marker_area"]), min_object_area=int(pp["min_object_area"]),
                              fill_holes=bool(pp["fill_holes"]))
    return labels, maps


def load_split_samples(split_path: str | Path, samples_dir: str | Path, split: str = "val") -> list[dict[str, Any]]:
    """Images of one side of the split with their true labels and modality."""
    table = pd.read_csv(split_path)
    samples = []
    for row in table[table["split"] == split].itertuples():
        path = Path(samples_dir) / f"{row.id}.npz"
        with np.load(path) as npz:
            samples.append({"id": row.id, "modality": row.modality, "image": npz["image"], "labels": npz["labels"]})
    return samples


def evaluate_model(model, samples: list[dict[str, Any]], params: dict[str, Any], desc: str = "evaluate"):
    """Per-image metrics, and the predicted labels (kept for overlays)."""
    rows, predictions = [], {}
    for sample in tqdm(samples, desc=f"{desc}: segmenting images", unit="image"):
        pred, _ = segment(model, sample["image"].astype(np.float32) / 255.0, params)
        truth = sample["labels"]
        per_threshold = metrics.dsb_scores_per_threshold(truth, pred)
        rows.append({"id": sample["id"], "modality": sample["modality"], "dsb": float(per_threshold.mean()),
                     **{f"ap@{t:.2f}": float(v) for t, v in zip(metrics.THRESHOLDS, per_threshold)},
                     "pixel_iou": metrics.pixel_iou(truth > 0, pred > 0),
                     "pixel_dice": metrics.pixel_dice(truth > 0, pred > 0),
                     "n_true": int(len(np.unique(truth)) - 1), "n_pred": int(pred.max())})
        predictions[sample["id"]] = pred
    return pd.DataFrame(rows), predictions


def summarize(per_image: pd.DataFrame) -> dict[str, Any]:
    """Means over images: overall and per modality."""
    def means(frame: pd.DataFrame) -> dict[str, float]:
        return {"dsb": round(float(frame["dsb"].mean()), 4), "pixel_iou": round(float(frame["pixel_iou"].mean()), 4),
                "pixel_dice": round(float(frame["pixel_dice"].mean()), 4), "images": int(len(frame))}

    return {"overall": means(per_image),
            "per_modality": {m: means(part) for m, part in per_image.groupby("modality")}}


def draw_outlines(image: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """Copy of a uint8 RGB image with each instance's inner outline painted in `colour`."""
    panel = image.copy()
    panel[find_boundaries(labels, mode="inner")] = colour
    return panel


def overlay_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """image | truth contours (green) | predicted contours (yellow), side by side."""
    return np.concatenate([image, draw_outlines(image, truth, (0, 255, 0)), draw_outlines(image, pred)], axis=1)


def threshold_curve(per_image: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"iou_threshold": metrics.THRESHOLDS,
                         "precision": [round(float(per_image[f"ap@{t:.2f}"].mean()), 4) for t in metrics.THRESHOLDS]})


def log_to_run(summaries: dict[str, dict[str, Any]], per_image: pd.DataFrame, samples, predictions, params,
               reports: dict) -> None:
    """Final `val_*` and `test_*` metrics, and overlays of the test images, into the active run."""
    import mlflow

    flat = {}
    for split, summary in summaries.items():
        flat.update({f"{split}_{k}": v for k, v in summary["overall"].items() if k != "images"})
        for modality, values in summary["per_modality"].items():
            flat.update({f"{split}_{k}_{modality}": v for k, v in values.items() if k != "images"})
    mlflow.log_metrics(flat)
    for path in reports.values():
        mlflow.log_artifact(str(path), "evaluation")
    per_modality = int(params["evaluate"]["overlays_per_modality"])
    by_id = {s["id"]: s for s in samples}
    for modality, part in per_image.groupby("modality"):
        for image_id in part["id"].head(per_modality):
            panel = overlay_panel(by_id[image_id]["image"], by_id[image_id]["labels"], predictions[image_id])
            mlflow.log_image(panel, f"overlays/{modality}/{image_id}.png")


def run(params: dict[str, Any], model_dir: str | Path = "models/untuned", split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", metrics_path: str | Path = "reports/eval_metrics.json",
        per_image_path: str | Path = "reports/eval_per_image.csv",
        per_modality_path: str | Path = "reports/eval_per_modality.csv",
        thresholds_path: str | Path = "reports/eval_thresholds.csv") -> dict[str, Any]:
    import keras
    import mlflow

    model_dir = Path(model_dir)
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)  # inference only
    summaries, tables = {}, []
    for split in ("val", "test"):
        samples = load_split_samples(split_path, samples_dir, split)
        per_image, predictions = evaluate_model(model, samples, params, desc=f"evaluate {split}")
        summaries[split] = summarize(per_image)
        tables.append(per_image.assign(split=split))
    test = tables[-1]
    per_modality = pd.DataFrame([{"modality": m, **v} for m, v in summaries["test"]["per_modality"].items()])
    io.write_csv(per_image_path, pd.concat(tables, ignore_index=True).round(5))
    io.write_csv(per_modality_path, per_modality)
    io.write_csv(thresholds_path, threshold_curve(test))
    io.write_json(metrics_path, summaries)
    tracking.setup()
    run_id = json.loads((model_dir / "run.json").read_text())["run_id"]
    with mlflow.start_run(run_id=run_id):
        datasets.log_split_inputs(split_path, ("test",), params)
        log_to_run(summaries, test, samples, predictions, params,
                   {"per_image": per_image_path, "per_modality": per_modality_path, "thresholds": thresholds_path})
    log.info("DSB: val %.4f, test %.4f; test per modality %s", summaries["val"]["overall"]["dsb"],
             summaries["test"]["overall"]["dsb"], {m: v["dsb"] for m, v in summaries["test"]["per_modality"].items()})
    return summaries
