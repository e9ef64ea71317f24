"""Accuracy as the field measures it: the DSB2018 metric on the `val` and `test` splits, per
modality, for the untuned model, and the tuned-vs-untuned table from promotion (scored on `test`).

Run from the project root after `dvc repro`:  python benchmarks/accuracy.py [--recompute]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def show(title: str, summary: dict) -> None:
    overall = summary["overall"]
    print(f"{title}: DSB {overall['dsb']:.4f}  pixel IoU {overall['pixel_iou']:.4f}  Dice {overall['pixel_dice']:.4f}"
          f"  ({overall['images']} images)")
    for modality, values in summary["per_modality"].items():
        print(f"  {modality:<13} DSB {values['dsb']:.4f}  pixel IoU {values['pixel_iou']:.4f}  "
              f"Dice {values['pixel_dice']:.4f}  ({values['images']} images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recompute", action="store_true", help="re-run evaluation of models/untuned/model.keras")
    args = parser.parse_args()
    if args.recompute:
        import keras

        from nucseg.core.data import load_split
        from nucseg.core.evaluation import evaluate_model, summarize

        from nucseg.mlops.networks import package_record
        from nucseg.mlops.packaging import read_recipe

        model = keras.saving.load_model("models/untuned/model.keras", compile=False)
        for split in ("val", "test"):
            samples = load_split("artifacts/split.csv", "artifacts/prepared", (split,))[split]
            recipe = read_recipe(package_record("untuned"))  # the thresholds `package` chose
            per_image, _ = evaluate_model(model, samples, recipe, desc=f"benchmark {split}")
            show(f"untuned network, Keras, on {split} (recomputed)", summarize(per_image))
    else:
        measured = json.loads(Path("reports/eval_metrics.json").read_text())
        for split in ("val", "test"):
            show(f"untuned package {measured['model_uri']} on {split} (reports/eval_metrics.json)", measured[split])
    promotion = Path("reports/promotion.json")
    if promotion.exists():
        print("promotion:", json.dumps(json.loads(promotion.read_text()), indent=1))


if __name__ == "__main__":
    main()
