"""Scoring speed of the registered champion: end to end (read, normalise, network, watershed,
write every output) with the local engine and with Spark, and the network alone.

Run from the project root after `dvc repro`:  python benchmarks/scoring.py [--input data/stage1_test]
Prints numbers; asserts nothing. Writes into a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nucseg import io
from nucseg.config import load_params
from nucseg.core.preprocess import preprocess
from nucseg.core.segment import probability_maps
from nucseg.stages import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("data/stage1_test"))
    parser.add_argument("--model-uri", default="models:/nucseg-unet@champion")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    params = load_params()
    images = io.find_images(args.input)
    megapixels = sum(io.read_image(path).shape[0] * io.read_image(path).shape[1] for _, path in images) / 1e6
    network, recipe, source = score.load_model(args.model_uri)
    print(f"{len(images)} images, {megapixels:.2f} megapixels, model {source.get('name')} v{source.get('version')}, "
          f"tta={recipe.tta}")

    prepared = [preprocess(io.read_image(path), recipe.normalize_low, recipe.normalize_high, recipe.resize)
                for _, path in images]
    probability_maps(network, prepared[0], recipe)  # trace once
    start = time.perf_counter()
    for image in prepared:
        probability_maps(network, image, recipe)
    print(f"network alone (Keras, {__import__('keras').backend.backend()}): "
          f"{megapixels / (time.perf_counter() - start):.2f} megapixels/s")

    with tempfile.TemporaryDirectory() as tmp:
        walls = {}
        for engine in ("local", "spark"):
            start = time.perf_counter()
            score.run(args.model_uri, args.input, Path(tmp) / engine, params, engine=engine, master=args.master)
            walls[engine] = time.perf_counter() - start
            print(f"end to end, {engine} engine: {walls[engine]:.1f} s, {megapixels / walls[engine]:.2f} megapixels/s")
        same = (Path(tmp) / "local" / "submission.csv").read_text() == (Path(tmp) / "spark" / "submission.csv").read_text()
        print(f"spark / local wall time: {walls['spark'] / walls['local']:.2f}x; identical submission.csv: {same}")


if __name__ == "__main__":
    main()
