"""Stage `evaluate`: whole-image instance segmentation of the `val` and `test` splits by the
untuned network's package (`models/packages/untuned.json`: the segmenter the registry gets, on its
own runtime and recipe), scored as the field scores it (DSB2018 metric), per image and per
modality, logged into the training run. `promote` reuses these `test` scores.

`test` is the final report: nothing was chosen on it, so its DSB is the honest estimate. Its
shifted copies (`evaluate.shifts`: other magnifications, darker, brighter, noisier; see
`core.shifts`) say what another microscope would do to the model: `test_<shift>_dsb` metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.data import load_split
from nucseg.core import maps_cache
from nucseg.core.evaluation import evaluate_model, evaluate_shifted, summarize, summarize_shifts, threshold_curve
from nucseg.core.overlay import overlay_panel
from nucseg.mlops import tracking
from nucseg.mlops.networks import package_record
from nucseg.mlops.packaging import read_run_info
from nucseg.mlops.runs import stage_run
from nucseg.mlops.segmenter_model import load_segmenter

log = get_logger("nucseg.evaluate")


def shift_metrics(shifted: dict[str, dict[str, float]]) -> dict[str, float]:
    """`test_<shift>_dsb[_<modality>]`: one MLflow metric per shifted copy (and modality)."""
    return {f"test_{shift}_{key}": value for shift, values in shifted.items() for key, value in values.items()}


def log_to_run(summaries: dict[str, dict[str, Any]], per_image: pd.DataFrame, samples, predictions, params,
               reports: dict) -> None:
    """Final `val_*`, `test_*` and shifted-copy metrics, and overlays of the test images, into the active run."""
    import mlflow

    flat = shift_metrics(summaries["test"].get("shifted", {}))
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


def run(params: dict[str, Any], package_path: str | Path = package_record("untuned"),
        split_path: str | Path = "artifacts/split.csv", samples_dir: str | Path = "artifacts/prepared",
        metrics_path: str | Path = "reports/eval_metrics.json",
        per_image_path: str | Path = "reports/eval_per_image.csv",
        per_modality_path: str | Path = "reports/eval_per_modality.csv",
        thresholds_path: str | Path = "reports/eval_thresholds.csv",
        shifted_path: str | Path = "reports/eval_shifted.csv") -> dict[str, Any]:
    import mlflow

    tracking.setup()
    run_id, model_uri = read_run_info(Path(package_path))
    mlflow.MlflowClient().get_run(run_id)  # a store without the training run fails now, not after the work
    model, recipe = load_segmenter(model_uri)  # its own runtime and thresholds
    model = maps_cache.cached(model)  # `package` met `val` with it already
    samples = load_split(split_path, samples_dir, ("val", "test"), desc="evaluate: loading")
    results = {split: evaluate_model(model, part, recipe, desc=f"evaluate {split}") for split, part in samples.items()}
    summaries = {split: summarize(per_image) for split, (per_image, _) in results.items()}
    test, predictions = results["test"]
    shifted = evaluate_shifted(model, samples["test"], recipe, tuple(params["evaluate"]["shifts"]), desc="evaluate test")
    summaries["test"]["shifted"] = summarize_shifts(shifted)
    io.write_csv(shifted_path, shifted.round(5))
    per_modality = pd.DataFrame([{"modality": m, **v} for m, v in summaries["test"]["per_modality"].items()])
    io.write_csv(per_image_path, pd.concat([per_image.assign(split=split) for split, (per_image, _) in results.items()],
                                           ignore_index=True).round(5))
    io.write_csv(per_modality_path, per_modality)
    io.write_csv(thresholds_path, threshold_curve(test))
    io.write_json(metrics_path, {**summaries, "model_uri": model_uri})
    with stage_run("evaluate", params, split_path, ("test",), run_id=run_id):
        log_to_run(summaries, test, samples["test"], predictions, params,
                   {"per_image": per_image_path, "per_modality": per_modality_path, "thresholds": thresholds_path,
                    "shifted": shifted_path})
    log.info("evaluate: %s", model.summary())
    log.info("DSB: val %.4f, test %.4f; test per modality %s; shifted test copies %s", summaries["val"]["overall"]["dsb"],
             summaries["test"]["overall"]["dsb"], {m: v["dsb"] for m, v in summaries["test"]["per_modality"].items()},
             {shift: v["dsb"] for shift, v in summaries["test"]["shifted"].items()})
    return summaries
