"""Accuracy as the field measures it: the DSB2018 metric on the validation split, per modality,
for the untuned model, and the tuned-vs-untuned table from promotion.

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

        from nucseg.config import load_params
        from nucseg.evaluate import evaluate_model, load_split_samples, summarize

        model = keras.saving.load_model("models/untuned/model.keras", compile=False)
        per_image, _ = evaluate_model(model, load_split_samples("artifacts/split.csv", "artifacts/prepared"),
                                      load_params(), desc="benchmark")
        show("untuned (recomputed)", summarize(per_image))
    else:
        show("untuned (reports/eval_metrics.json)", json.loads(Path("reports/eval_metrics.json").read_text()))
    promotion = Path("reports/promotion.json")
    if promotion.exists():
        print("promotion:", json.dumps(json.loads(promotion.read_text()), indent=1))


if __name__ == "__main__":
    main()
