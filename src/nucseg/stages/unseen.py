"""Stage `unseen`: how the training recipe does on an image type it never saw (leave-type-out).

`test` shares every image type with `train`, so it cannot say what a new microscope does to a
model. Each fold (`unseen.folds`) trains the untuned recipe without some image types (one
modality at one acquisition size, as the sampler counts types), on a shorter budget
(`unseen.epochs`), chooses its thresholds on the rest of `val`, and scores every image of the
held-out types, from any split: none of them was seen. The DSB per held-out type, and their
mean, go to `reports/unseen_types.json` and to an MLflow run; `promote` tags every registered
version with them.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.mlops import tracking
from nucseg.mlops.runs import stage_run

log = get_logger("nucseg.unseen")


def image_types(split: pd.DataFrame) -> pd.Series:
    """`<modality> <height>x<width>` of every row of the split table."""
    return split["modality"] + " " + split["height"].astype(str) + "x" + split["width"].astype(str)


def metric_name(image_type: str) -> str:
    return "unseen_dsb_" + re.sub(r"[^0-9a-zA-Z]+", "_", image_type).strip("_")


def held_out_types(fold: list[str], types: set[str]) -> list[str]:
    """The image types a fold names: exactly, or every type of a named modality."""
    return sorted(t for t in types for entry in fold if t == entry or t.startswith(entry + " "))


def fold_scores(params: dict[str, Any], samples: list[dict[str, Any]], held_out: list[str],
                work_dir: Path) -> pd.DataFrame | None:
    """Per-image metrics of the held-out types' images, by a model trained without them; None
    when the data leaves nothing to train, choose thresholds on or score."""
    import keras

    from nucseg.core.calibration import chosen_recipe
    from nucseg.core.evaluation import evaluate_model
    from nucseg.core.training import build_model, fit

    train = [s for s in samples if s["split"] == "train" and s["type"] not in held_out]
    val = [s for s in samples if s["split"] == "val" and s["type"] not in held_out]
    unseen = [s for s in samples if s["type"] in held_out]
    if not (train and val and unseen):
        log.warning("unseen: fold without %s skipped: %d training, %d val and %d held-out images", held_out,
                    len(train), len(val), len(unseen))
        return None
    log.info("unseen: fold without %s: training on %d images, scoring %d unseen ones", held_out, len(train), len(unseen))
    keras.utils.set_random_seed(int(params["train"]["seed"]))
    model = build_model(params["model"], params["train"])
    fit(model, train, val, params, work_dir, run_id="", epochs=int(params["unseen"]["epochs"]))  # its own budget
    model = keras.saving.load_model(work_dir / "best.keras")
    recipe, _, _ = chosen_recipe(model, params, train, val, desc=f"unseen: thresholds without {', '.join(held_out)}")
    per_image, _ = evaluate_model(model, unseen, recipe, desc=f"unseen: {', '.join(held_out)}")
    types = {s["id"]: s["type"] for s in unseen}
    return per_image.assign(type=per_image["id"].map(types), fold=" + ".join(held_out))


def summary_of(per_image: pd.DataFrame) -> dict[str, Any]:
    per_type = {t: {"dsb": round(float(g["dsb"].mean()), 4), "images": int(len(g))}
                for t, g in per_image.groupby("type")}
    return {"per_type": per_type, "mean_dsb": round(float(pd.Series([v["dsb"] for v in per_type.values()]).mean()), 4)}


def run(params: dict[str, Any], split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", metrics_path: str | Path = "reports/unseen_types.json",
        per_image_path: str | Path = "reports/unseen_per_image.csv") -> dict[str, Any]:
    import mlflow

    from nucseg.core.data import load_split

    split = pd.read_csv(split_path).assign(type=lambda t: image_types(t))
    present = set(split["type"])
    folds = [held_out_types(list(fold), present) for fold in params["unseen"]["folds"]]
    for named, found in zip(params["unseen"]["folds"], folds):
        if len(found) < len(named):
            log.warning("unseen: fold %s: the data has only %s of it (types: %s)", named, found, sorted(present))
    sides = tuple(split["split"].unique())
    loaded = load_split(split_path, samples_dir, sides, desc="unseen: loading")
    types = dict(zip(split["id"], split["type"]))
    samples = [{**sample, "type": types[sample["id"]]} for side in sides for sample in loaded[side]]
    with tempfile.TemporaryDirectory(prefix="nucseg-unseen-") as tmp:
        scored = [fold_scores(params, samples, fold, Path(tmp) / str(k)) for k, fold in enumerate(folds) if fold]
    scored = [frame for frame in scored if frame is not None]
    if not scored:
        raise ValueError(f"unseen.folds {params['unseen']['folds']}: no fold could be trained and scored on this "
                         f"data (its image types: {sorted(present)})")
    per_image = pd.concat(scored, ignore_index=True)
    summary = summary_of(per_image)
    io.write_csv(per_image_path, per_image.round(5))
    io.write_json(metrics_path, summary)
    tracking.setup()
    with stage_run("unseen", params, split_path, ("train", "val"), run_name="unseen types",
                   logged={"unseen.epochs": params["unseen"]["epochs"],
                           "unseen.folds": "; ".join(" + ".join(f) for f in folds)}):
        mlflow.log_metrics({"unseen_dsb_mean": summary["mean_dsb"],
                            **{metric_name(t): v["dsb"] for t, v in summary["per_type"].items()}})
        mlflow.log_artifact(str(metrics_path), "unseen")
        mlflow.log_artifact(str(per_image_path), "unseen")
    log.info("unseen image types: mean DSB %.4f; %s", summary["mean_dsb"],
             {t: v["dsb"] for t, v in summary["per_type"].items()})
    return summary
