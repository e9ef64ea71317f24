"""Stage `unseen`: how the training recipe does on an image type it never saw (leave-type-out).

`test` shares every image type with `train`, so it cannot say what a new microscope does to a
model. Each fold's network (`unseen_fold`: the untuned recipe trained without some image types)
gets its thresholds chosen on the rest of `val`, as `package` chooses them, and segments every
image of its held-out types, from any split: none of them was seen. The DSB per held-out type,
and their mean, go to `reports/unseen_types.json` and to an MLflow run; `promote` tags every
registered version with them. The networks' maps are kept (`core.maps_cache`), so a
post-processing change reruns the watershed here, not the folds' training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.folds import image_types
from nucseg.mlops import tracking
from nucseg.mlops.networks import FOLDS_DIR
from nucseg.mlops.runs import stage_run

log = get_logger("nucseg.unseen")


def metric_name(image_type: str) -> str:
    return "unseen_dsb_" + re.sub(r"[^0-9a-zA-Z]+", "_", image_type).strip("_")


def fold_scores(params: dict[str, Any], samples: list[dict[str, Any]], fold: dict[str, Any],
                network_path: Path) -> pd.DataFrame:
    """Per-image metrics of the fold's held-out images by its network, with thresholds chosen on
    the `val` images of the other types."""
    from nucseg.core import maps_cache
    from nucseg.core.calibration import chosen_recipe
    from nucseg.core.evaluation import evaluate_model
    from nucseg.core.runtime import load_keras

    held_out = fold["held_out"]
    train = [s for s in samples if s["split"] == "train" and s["type"] not in held_out]
    val = [s for s in samples if s["split"] == "val" and s["type"] not in held_out]
    unseen = [s for s in samples if s["type"] in held_out]
    network = maps_cache.cached(load_keras(network_path))
    recipe, _, _ = chosen_recipe(network, params, train, val, desc=f"unseen {fold['fold']}: thresholds")
    per_image, _ = evaluate_model(network, unseen, recipe, desc=f"unseen {fold['fold']}: {', '.join(held_out)}")
    log.info("unseen fold %s: %s", fold["fold"], network.summary())
    types = {s["id"]: s["type"] for s in unseen}
    return per_image.assign(type=per_image["id"].map(types), fold=" + ".join(held_out))


def summary_of(per_image: pd.DataFrame) -> dict[str, Any]:
    per_type = {t: {"dsb": round(float(g["dsb"].mean()), 4), "images": int(len(g))}
                for t, g in per_image.groupby("type")}
    return {"per_type": per_type, "mean_dsb": round(float(pd.Series([v["dsb"] for v in per_type.values()]).mean()), 4)}


def run(params: dict[str, Any], split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", folds_dir: str | Path = FOLDS_DIR,
        metrics_path: str | Path = "reports/unseen_types.json",
        per_image_path: str | Path = "reports/unseen_per_image.csv") -> dict[str, Any]:
    import mlflow

    from nucseg.core.data import load_split

    folds = []
    for name in params["unseen"]["folds"]:
        record = Path(folds_dir) / name / "fold.json"
        if not record.is_file():
            raise ValueError(f"{record}: not found; train the fold first (`dvc repro unseen_fold@{name}`)")
        fold = json.loads(record.read_text())
        if fold["trained"]:
            folds.append(fold)
        else:
            log.warning("unseen: fold %s skipped: %s", name, fold["reason"])
    split = pd.read_csv(split_path).assign(type=lambda t: image_types(t))
    if not folds:
        raise ValueError(f"unseen.folds {dict(params['unseen']['folds'])}: no fold could be trained and scored on "
                         f"this data (its image types: {sorted(set(split['type']))})")
    sides = tuple(split["split"].unique())
    loaded = load_split(split_path, samples_dir, sides, desc="unseen: loading")
    types = dict(zip(split["id"], split["type"]))
    samples = [{**sample, "type": types[sample["id"]]} for side in sides for sample in loaded[side]]
    per_image = pd.concat([fold_scores(params, samples, fold, Path(folds_dir) / fold["fold"] / "model.keras")
                           for fold in folds], ignore_index=True)
    summary = summary_of(per_image)
    io.write_csv(per_image_path, per_image.round(5))
    io.write_json(metrics_path, summary)
    tracking.setup()
    with stage_run("unseen", params, split_path, ("train", "val"), run_name="unseen types",
                   logged={"unseen.epochs": params["unseen"]["epochs"],
                           "unseen.folds": "; ".join(" + ".join(f["held_out"]) for f in folds)}):
        mlflow.log_metrics({"unseen_dsb_mean": summary["mean_dsb"],
                            **{metric_name(t): v["dsb"] for t, v in summary["per_type"].items()}})
        mlflow.log_artifact(str(metrics_path), "unseen")
        mlflow.log_artifact(str(per_image_path), "unseen")
    log.info("unseen image types: mean DSB %.4f; %s", summary["mean_dsb"],
             {t: v["dsb"] for t, v in summary["per_type"].items()})
    return summary
