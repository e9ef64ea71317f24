"""How a model does on another microscope: DSB of the `test` split and of its shifted copies
(rescaled ×0.25–×4, darker, brighter, noisier), with each copy's DSB as a share of the unscaled
one, and what the size estimate costs.

    python benchmarks/scale.py [--network untuned|tuned] [--on val|test] [--images N] [--shifts x2,x3]
                               [--no-rescale] [--band 0.75,1.3]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import nucseg.config  # noqa: F401 - backend before keras
import keras

from nucseg.core.data import load_split
from nucseg.core.evaluation import evaluate_model, evaluate_shifted, summarize_shifts

from nucseg.core.segment import probability_maps, size_of
from nucseg.core.shifts import SHIFTS
from nucseg.mlops.networks import TRAINED_NETWORKS, package_record
from nucseg.mlops.packaging import read_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="untuned", choices=tuple(TRAINED_NETWORKS),
                        help="a trained network, with the recipe its `package` stage chose")
    parser.add_argument("--split", default="artifacts/split.csv")
    parser.add_argument("--samples", default="artifacts/prepared")
    parser.add_argument("--on", default="test", choices=("val", "test"), help="the split whose copies are scored "
                        "(choose settings on val)")
    parser.add_argument("--images", type=int, default=0, help="every k-th test image so that about N remain (0: all)")
    parser.add_argument("--shifts", default=",".join(SHIFTS))
    parser.add_argument("--no-rescale", action="store_true", help="the same model without the scale handling")
    parser.add_argument("--band", help="low,high: try another size band (x the training diameter)")
    args = parser.parse_args()
    model_dir = Path(TRAINED_NETWORKS[args.network].directory)
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    recipe = read_recipe(package_record(args.network))
    if args.no_rescale:
        recipe = dataclasses.replace(recipe, rescale=False)
    if args.band:
        low, high = map(float, args.band.split(","))
        recipe = dataclasses.replace(recipe, size_band_low=low, size_band_high=high)
    samples = load_split(args.split, args.samples, (args.on,))[args.on]
    if args.images:
        samples = samples[:: max(1, len(samples) // args.images)]
    print(f"model {model_dir}, {len(samples)} {args.on} images, nucleus_diameter {recipe.nucleus_diameter}, "
          f"rescale {recipe.rescale}, band {recipe.size_band_low}-{recipe.size_band_high}")

    started = time.perf_counter()
    base, _ = evaluate_model(model, samples, recipe, desc="unscaled")
    seconds = time.perf_counter() - started
    estimate = time.perf_counter()
    for sample in samples:
        size_of(model, sample["image"], recipe)
    estimate = time.perf_counter() - estimate
    single = time.perf_counter()
    for sample in samples:
        probability_maps(model, sample["image"], dataclasses.replace(recipe, tta="none"))
    single = time.perf_counter() - single
    unscaled = float(base["dsb"].mean())
    print(f"unscaled: DSB {unscaled:.4f} "
          f"({', '.join(f'{m} {g.dsb.mean():.4f}' for m, g in base.groupby('modality'))}); {seconds:.1f} s")
    print(f"size estimate: {estimate:.1f} s alone, of which the full-size pass {single:.1f} s is reused as a view: "
          f"extra cost {100 * (estimate - single) / seconds:.1f} % of scoring")
    for shift in args.shifts.split(","):
        started = time.perf_counter()
        part = evaluate_shifted(model, samples, recipe, (shift,), desc="shifted")
        values = summarize_shifts(part)[shift]
        print(f"{time.perf_counter() - started:6.1f} s ", end="")
        print(f"{shift:>8}: DSB {values['dsb']:.4f} = {values['dsb'] / unscaled:.0%} of unscaled; "
              f"median scale x{part['scale'].median():.2f}; "
              + ", ".join(f"{k[4:]} {v:.4f}" for k, v in values.items() if k != "dsb"))


if __name__ == "__main__":
    main()
