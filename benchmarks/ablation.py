"""What each step of the accuracy recipe buys: one MLflow run per step (tag `ablation=<step>`),
each scored on `test` per modality and on shifted copies of `test` (darker, paler, re-stained).

Steps are cumulative, from the seeds'-notebook baseline to the pipeline's defaults, except
`gap_target`, a variant of the baseline that the later steps keep only if params.yaml chose it:

  baseline     inner-border separator, RGB input, geometric augmentation, params' thresholds
  gap_target   the baseline with the touching-gap separator instead, weighted up in the loss
  inputs       + params' separator, grey input (luminance, inverted on bright backgrounds, CLAHE),
               rare modalities oversampled
  augment      + gamma, dimming, blur and noise augmentation
  thresholds   + thresholds searched on `val` (same network as `augment`)
  tta          + test-time augmentation: params' views, else all eight turns and mirrors (same
               network and thresholds)
  pipeline     the pipeline's own untuned network (models/untuned, trained by `dvc repro`): the
               params' full budget and early stopping instead of `--epochs`, its own recipe
               (thresholds, TTA, nuclei brought to the training size: the steps before it never rescale)

The tuner's step is the pipeline's own `tune` run (reports/promotion.json). Every training gets
the same fixed budget (`--epochs`, not minutes, so a busy machine changes the time, not the
result). Needs the pipeline's artifacts (`dvc repro validate split`; `pipeline`: `dvc repro train`).

Run from the project root:  python benchmarks/ablation.py [--epochs 15] [--steps baseline,gap_target,...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nucseg import io
from nucseg.config import load_params
from nucseg.core.augment import AugmentConfig
from nucseg.core.data import load_split
from nucseg.core.evaluation import evaluate_model, summarize

from nucseg.core.metrics import dsb_score
from nucseg.core.segment import Recipe, segment
from nucseg.mlops import tracking
from nucseg.mlops.networks import package_record
from nucseg.mlops.packaging import read_recipe

STEPS = ("baseline", "gap_target", "inputs", "augment", "thresholds", "tta", "pipeline")
PIPELINE_MODEL = Path("models/untuned")
ROBUSTNESS_AUGMENT = ("gamma", "intensity_min", "hed_jitter", "hue", "saturation", "greyscale", "blur_sigma", "noise")
WORK = Path("artifacts/ablation")


def step_params(params: dict, step: str) -> dict:
    """The pipeline's params switched back to the state before every step after `step`."""
    p = copy.deepcopy(params)
    upto = STEPS.index(step)
    if step == "baseline":
        p["prepare"]["separator"] = "border"
        p["train"]["border_loss_weight"] = 1.0
    if step == "gap_target":
        p["prepare"]["separator"] = "gap"
        p["train"]["border_loss_weight"] = 2.0
    if upto < STEPS.index("inputs"):
        p["prepare"].update(input_form="rgb", clahe_clip=0.0)
        p["train"].update(modality_balance=0.0, type_balance=0.0)
    if upto < STEPS.index("augment"):
        off = dataclasses.asdict(AugmentConfig.none())
        p["augment"].update({key: off[key] for key in ROBUSTNESS_AUGMENT})
    if upto < STEPS.index("thresholds"):
        p["postprocess"]["search"] = {}
    p["inference"]["tta"] = tta_views(params) if upto >= STEPS.index("tta") else "none"
    p["inference"]["rescale"] = False
    return p


def tta_views(params: dict) -> str:
    """The params' test-time views (read as a recipe reads them), or all eight if they have none."""
    views = Recipe.from_params(params).tta
    return views if views != "none" else "dihedral"


# ---- shifted copies of test: what users bring that DSB does not hold ----

def darker(image: np.ndarray) -> np.ndarray:
    """A dim acquisition: a third of the signal, most of it in the low bits."""
    return np.round((image.astype(np.float32) / 255.0) ** 1.5 * 255 * 0.35).astype(np.uint8)


def paler(image: np.ndarray) -> np.ndarray:
    """A faded stain or a washed-out field: half the contrast, lifted towards white."""
    return np.round(image.astype(np.float32) * 0.45 + 140).clip(0, 255).astype(np.uint8)


def restained(image: np.ndarray) -> np.ndarray:
    """Another lab's stain: haematoxylin weaker, eosin stronger (pinker H&E); fluorescence
    images move to another colour channel."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image[..., :3].astype(np.float32) / 255.0)
    hed[..., 0] *= 0.6
    hed[..., 1] = hed[..., 1] * 1.8 + 0.05
    return np.round(np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


SHIFTS = {"darker": darker, "paler": paler, "restained": restained}


def raw_test_images(split_path: str, manifest_path: str) -> list[dict]:
    manifest = pd.read_csv(manifest_path).set_index("id")
    samples = load_split(split_path, "artifacts/prepared", ("test",))["test"]
    return [{"id": s["id"], "modality": s["modality"], "labels": s["labels"],
             "raw": io.to_rgb(io.read_image(manifest.loc[s["id"], "image_path"]))[..., :3]} for s in samples]


def shifted_dsb(model, raw: list[dict], recipe: Recipe) -> dict[str, dict[str, float]]:
    """DSB per shift and modality of raw test images shifted, then segmented as `score` would."""
    out = {}
    for name, shift in SHIFTS.items():
        rows = [{"modality": s["modality"], "dsb": dsb_score(s["labels"], segment(model, shift(s["raw"]), recipe))}
                for s in raw]
        frame = pd.DataFrame(rows)
        out[name] = {"overall": round(float(frame["dsb"].mean()), 4),
                     **{m: round(float(part["dsb"].mean()), 4) for m, part in frame.groupby("modality")}}
    return out


# ---- steps ----

def prepared_dir(params: dict) -> Path:
    """One prepared set per distinct `prepare` section, reused by the steps that share it."""
    import hashlib

    from nucseg.stages import prepare

    key = hashlib.sha256(json.dumps(params["prepare"], sort_keys=True).encode()).hexdigest()[:10]
    folder = WORK / f"prepared-{key}"
    if not (folder / "done").exists():
        prepare.run(params, manifest_path="artifacts/manifest.csv", samples_dir=folder / "samples",
                    summary_path=folder / "summary.json")
        (folder / "done").write_text("ok\n")
    return folder / "samples"


def store_recipe(model, params: dict, model_dir: Path, run_id: str | None, run_name: str | None = None) -> str:
    """The network's recipe as the `package` stage chooses it (params' thresholds where the step's
    `postprocess.search` is empty), in `model_dir/recipe.json` and in the run."""
    import mlflow

    from nucseg.core.calibration import chosen_recipe
    from nucseg.mlops.logged_models import log_recipe

    samples = load_split("artifacts/split.csv", prepared_dir(params), ("train", "val"))
    recipe, table, chosen = chosen_recipe(model, params, samples["train"], samples["val"],
                                          desc=f"ablation {model_dir}: thresholds")
    io.atomic_write_text(model_dir / "recipe.json", recipe.to_json())
    with mlflow.start_run(run_id=run_id, run_name=run_name) as run:
        log_recipe(recipe, table, chosen)
    return run.info.run_id


def train_step(params: dict, step: str, epochs: int) -> tuple[str, Path]:
    """Train the step's network and choose its recipe; (its MLflow run, its model folder)."""
    import keras

    from nucseg.stages import train

    p = copy.deepcopy(params)
    p["train"].update(epochs=epochs, max_minutes=10_000)
    model_dir = WORK / step / "model"
    samples = prepared_dir(p)
    train.run(p, split_path="artifacts/split.csv", samples_dir=samples, model_dir=model_dir,
              metrics_path=WORK / step / "train_metrics.json", history_path=WORK / step / "history.csv",
              work_dir=WORK / step / "checkpoints")
    run_id = json.loads((model_dir / "run.json").read_text())["run_id"]
    store_recipe(keras.saving.load_model(model_dir / "model.keras", compile=False), p, model_dir, run_id)
    return run_id, model_dir


def score_step(step: str, params: dict, model_dir: Path, raw: list[dict], run_id: str | None,
               source_run: str | None) -> dict:
    """Test DSB per modality and on the shifted copies, logged into the step's run."""
    import keras
    import mlflow

    recipe = read_recipe(package_record("untuned")) if model_dir == PIPELINE_MODEL \
        else Recipe.from_dict(json.loads((model_dir / "recipe.json").read_text()))
    if step == "tta":
        recipe = dataclasses.replace(recipe, tta=params["inference"]["tta"])
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    samples = load_split("artifacts/split.csv", prepared_dir(params), ("test",))["test"]
    started = time.perf_counter()
    per_image, _ = evaluate_model(model, samples, recipe, desc=f"ablation {step}: test")
    seconds = time.perf_counter() - started
    megapixels = sum(s["labels"].size for s in samples) / 1e6
    summary = summarize(per_image)
    shifted = shifted_dsb(model, raw, recipe)
    metrics = {"test_dsb": summary["overall"]["dsb"], "test_seconds_per_megapixel": seconds / megapixels,
               **{f"test_dsb_{m}": v["dsb"] for m, v in summary["per_modality"].items()},
               **{f"{shift}_dsb{'' if k == 'overall' else '_' + k}": v
                  for shift, values in shifted.items() for k, v in values.items()}}
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"ablation-{step}"):
        mlflow.set_tags({"ablation": step, "stage": "ablation", **tracking.lineage_tags(),
                         **({"ablation.network_run": source_run} if source_run else {})})
        if run_id is None:
            mlflow.log_params(tracking.flatten({k: params[k] for k in ("prepare", "train", "augment")}))
        mlflow.log_dict(recipe.to_dict(), f"ablation/{step}_recipe.json")
        mlflow.log_metrics(metrics)
    return {"step": step, **{k: round(v, 4) for k, v in metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15, help="epochs of 50 steps for every trained step")
    parser.add_argument("--steps", default=",".join(STEPS))
    args = parser.parse_args()
    import keras
    import mlflow

    tracking.setup()
    params = load_params()
    raw = raw_test_images("artifacts/split.csv", "artifacts/manifest.csv")
    rows, networks = [], {}
    for step in args.steps.split(","):
        p = step_params(params, step)
        if step == "pipeline":
            source_run = json.loads((PIPELINE_MODEL / "run.json").read_text())["run_id"]
            rows.append(score_step(step, p, PIPELINE_MODEL, raw, None, source_run))
            continue
        if step in ("thresholds", "tta"):
            base_run, base_dir = networks.get("augment") or (None, WORK / "augment" / "model")
            model_dir = WORK / step / "model"
            model_dir.mkdir(parents=True, exist_ok=True)
            if step == "thresholds":
                model = keras.saving.load_model(base_dir / "model.keras", compile=False)
                run_id = store_recipe(model, p, model_dir, None, run_name="ablation-thresholds")
                model.save(model_dir / "model.keras")
                rows.append(score_step(step, p, model_dir, raw, run_id, base_run))
            else:
                rows.append(score_step(step, p, WORK / "thresholds" / "model", raw, None, base_run))
            continue
        run_id, model_dir = train_step(p, step, args.epochs)
        networks[step] = (run_id, model_dir)
        mlflow.MlflowClient().set_tag(run_id, "mlflow.runName", f"ablation-{step}")
        rows.append(score_step(step, p, model_dir, raw, run_id, None))
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    io.write_csv(WORK / "ablation.csv", table)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
