"""Segmentations scored as the field scores it (DSB2018 metric), per image and per modality."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg.core import metrics
from nucseg.core.segment import Recipe, segment_prepared
from nucseg.core.shifts import SHIFTS, shifted_copy


def evaluate_model(model, samples: list[dict[str, Any]], recipe: Recipe, desc: str = "evaluate"):
    """Per-image metrics, and the predicted labels (kept for overlays). The prepared images went
    through the recipe's `preprocess` already, so this segments exactly as `score` would."""
    rows, predictions = [], {}
    for sample in tqdm(samples, desc=f"{desc}: segmenting images", unit="image"):
        pred, size = segment_prepared(model, sample["image"], recipe, *sample["labels"].shape)
        truth = sample["labels"]
        per_threshold = metrics.dsb_scores_per_threshold(truth, pred)
        rows.append({"id": sample["id"], "modality": sample["modality"], "dsb": float(per_threshold.mean()),
                     **{f"ap@{t:.2f}": float(v) for t, v in zip(metrics.THRESHOLDS, per_threshold)},
                     "pixel_iou": metrics.pixel_iou(truth > 0, pred > 0),
                     "pixel_dice": metrics.pixel_dice(truth > 0, pred > 0),
                     "n_true": int(len(np.unique(truth)) - 1), "n_pred": int(pred.max()),
                     "diameter": round(size.diameter, 2), "scale": round(size.factor, 4)})
        predictions[sample["id"]] = pred
    return pd.DataFrame(rows), predictions


def summarize(per_image: pd.DataFrame) -> dict[str, Any]:
    """Means over images: overall and per modality."""
    def means(frame: pd.DataFrame) -> dict[str, float]:
        return {"dsb": round(float(frame["dsb"].mean()), 4), "pixel_iou": round(float(frame["pixel_iou"].mean()), 4),
                "pixel_dice": round(float(frame["pixel_dice"].mean()), 4), "images": int(len(frame))}

    return {"overall": means(per_image),
            "per_modality": {m: means(part) for m, part in per_image.groupby("modality")}}


def threshold_curve(per_image: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"iou_threshold": metrics.THRESHOLDS,
                         "precision": [round(float(per_image[f"ap@{t:.2f}"].mean()), 4) for t in metrics.THRESHOLDS]})


def evaluate_shifted(model, samples: list[dict[str, Any]], recipe: Recipe, shifts=SHIFTS,
                     desc: str = "evaluate") -> pd.DataFrame:
    """Per-image metrics (as `evaluate_model`, plus a `shift` column) of shifted copies of
    `samples` (`shifts.shifted_copies`): what another magnification or camera does to the model."""
    settings = recipe.to_dict()
    frames = []
    for shift in shifts:
        copies = [dict(zip(("image", "labels"), shifted_copy(shift, s["image"], s["labels"], settings)),
                       id=s["id"], modality=s["modality"]) for s in samples]
        per_image, _ = evaluate_model(model, copies, recipe, desc=f"{desc} {shift}")
        frames.append(per_image.assign(shift=shift))
    return pd.concat(frames, ignore_index=True)


def summarize_shifts(per_image: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{shift: {"dsb": mean, "dsb_<modality>": mean per modality}}."""
    return {shift: {"dsb": round(float(part["dsb"].mean()), 4),
                    **{f"dsb_{m}": round(float(g["dsb"].mean()), 4) for m, g in part.groupby("modality")}}
            for shift, part in per_image.groupby("shift", sort=False)}
