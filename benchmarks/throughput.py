"""Training throughput (augmented crops/s) and whole-image inference throughput (megapixels/s).

Run from the project root after `dvc repro prepare`:  python benchmarks/throughput.py
Prints numbers; asserts nothing. Uses the default params (model, crops, batch size, workers) and
the untuned network's recipe (as its `package` stage chose it; the params' without one), timed with each TTA and
with nuclei brought to the training size (`rescale` of the recipe) and without.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nucseg.config import load_params

import keras  # noqa: E402  (after nucseg.config set the backend)

from nucseg.core.augment import AugmentConfig  # noqa: E402
from nucseg.core.data import CropDataset, load_samples  # noqa: E402
from nucseg.core.segment import TTA_VIEWS, Recipe, segment_prepared, segmentation_maps  # noqa: E402
from nucseg.core.training import build_model  # noqa: E402
from nucseg.mlops.networks import package_record  # noqa: E402
from nucseg.mlops.packaging import read_recipe  # noqa: E402


def training_throughput(params: dict, samples: list[dict], steps: int) -> float:
    cfg = params["train"]
    model = build_model(params["model"], cfg)
    dataset = CropDataset(samples, batch_size=int(cfg["batch_size"]), crop_size=int(cfg["crop_size"]),
                          steps_per_epoch=steps + 3, augment=AugmentConfig.from_params(params["augment"]),
                          seed=0, workers=int(cfg["workers"]))
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * int(cfg["batch_size"]) / (time.perf_counter() - start)


def inference_throughput(recipe: Recipe, model_path: Path | None, images: list[np.ndarray],
                         params: dict) -> tuple[float, float]:
    """Megapixels/s of the maps alone (the network; with `rescale`, also the size estimate's
    watersheds) and of the whole segmenter on prepared uint8 images."""
    model = keras.saving.load_model(model_path, compile=False) if model_path else build_model(params["model"], params["train"])
    for image in images[:2]:  # trace each size once
        segmentation_maps(model, image, recipe)
    megapixels = sum(i.shape[0] * i.shape[1] for i in images) / 1e6
    start = time.perf_counter()
    for image in images:
        segmentation_maps(model, image, recipe)
    network = megapixels / (time.perf_counter() - start)
    start = time.perf_counter()
    for image in images:
        segment_prepared(model, image, recipe, *image.shape[:2])
    return network, megapixels / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--images", type=int, default=20, help="validation images for inference")
    parser.add_argument("--model", type=Path, default=Path("models/untuned/model.keras"))
    parser.add_argument("--tta", default=",".join(TTA_VIEWS), help="test-time augmentations to time, comma-separated")
    args = parser.parse_args()
    params = load_params()
    split = pd.read_csv("artifacts/split.csv")
    train_ids = split.loc[split["split"] == "train", "id"].head(100)
    samples = load_samples([Path("artifacts/prepared") / f"{i}.npz" for i in train_ids], desc="benchmark: loading")
    crops = training_throughput(params, samples, args.steps)
    print(f"training: {crops:.1f} crops/s ({params['train']['crop_size']}px crops, batch {params['train']['batch_size']}, "
          f"depth {params['model']['depth']}, base {params['model']['base_filters']}, {keras.backend.backend()} backend)")
    val_ids = split.loc[split["split"] == "val", "id"].head(args.images)
    images = [s["image"] for s in
              load_samples([Path("artifacts/prepared") / f"{i}.npz" for i in val_ids], desc="benchmark: loading")]
    stored = package_record("untuned")
    base = read_recipe(stored) if stored.exists() else Recipe.from_params(params)
    settings = [(tta, rescale) for rescale in dict.fromkeys((base.rescale, False)) for tta in args.tta.split(",")]
    for tta, rescale in settings:
        recipe = dataclasses.replace(base, tta=tta, rescale=rescale)
        network, total = inference_throughput(recipe, args.model if args.model.exists() else None, images, params)
        print(f"inference (tta={recipe.tta}, rescale={recipe.rescale}): {network:.2f} megapixels/s "
              f"network only, {total:.2f} megapixels/s with watershed, {1 / total:.2f} s per megapixel "
              f"({len(images)} validation images, {sum(i.size // 3 for i in images) / 1e6:.2f} megapixels)", flush=True)


if __name__ == "__main__":
    main()
