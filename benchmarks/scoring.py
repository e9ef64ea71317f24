"""Scoring speed of the registered champion: the network alone on Keras and on ONNX Runtime, and
end to end (read, normalise, network, watershed, draw, measure, write every output) with the
local engine and with Spark, both on the model's own runtime.

Run from the project root after `dvc repro`:  python benchmarks/scoring.py [--input data/stage1_test]
Prints numbers; asserts nothing. Writes into a temporary folder. `--copies N` also scores N
copies of the input with both engines, to show how Spark's fixed cost (JVM, first job, one model
load per executor) shrinks relative to the work as the batch grows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nucseg import io
from nucseg.config import load_params
from nucseg.core.segment import prepared_image, probability_maps
from nucseg.mlops.segmenter_model import load_segmenter
from nucseg.mlops import model_uris
from nucseg.stages import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("data/stage1_test"))
    parser.add_argument("--model-uri", default="models:/nucseg-unet@champion")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    params = load_params()
    images = io.find_images(args.input)
    pixels = [io.read_image(path) for _, path in images]
    megapixels = sum(image.shape[0] * image.shape[1] for image in pixels) / 1e6
    network, recipe, source = model_uris.load_model(args.model_uri)
    print(f"{len(images)} images, {megapixels:.2f} megapixels, model {source.get('name')} v{source.get('version')}, "
          f"tta={recipe.tta}, runtime {type(network).__name__}")

    prepared = [prepared_image(image, recipe) for image in pixels]
    for runtime_name in ("keras", "onnx", "onnx-int8"):
        network, _ = load_segmenter(source["loaded_uri"], runtime_name=runtime_name)
        probability_maps(network, prepared[0], recipe)  # trace once
        start = time.perf_counter()
        for image in prepared:
            probability_maps(network, image, recipe)
        print(f"network alone, {runtime_name} ({type(network).__name__}): "
              f"{megapixels / (time.perf_counter() - start):.2f} megapixels/s")

    with tempfile.TemporaryDirectory() as tmp:
        compare_engines(args.input, megapixels, args, params, Path(tmp) / "as_is")
        if args.copies > 1:
            copies = Path(tmp) / "copies"  # a flat folder of links
            copies.mkdir()
            for copy in range(args.copies):
                for image_id, path in images:
                    (copies / f"{image_id}_{copy}{path.suffix}").symlink_to(path.resolve())
            compare_engines(copies, megapixels * args.copies, args, params, Path(tmp) / "copies_out")


def compare_engines(folder: Path, megapixels: float, args, params, out: Path) -> None:
    walls = {}
    print(f"{len(io.find_images(folder))} images:")
    for engine in ("local", "spark"):
        start = time.perf_counter()
        score.run(args.model_uri, folder, out / engine, params, engine=engine, master=args.master)
        walls[engine] = time.perf_counter() - start
        print(f"  end to end, {engine} engine: {walls[engine]:.1f} s, {megapixels / walls[engine]:.2f} megapixels/s")
    same = (out / "local" / "submission.csv").read_text() == (out / "spark" / "submission.csv").read_text()
    print(f"  spark / local wall time: {walls['spark'] / walls['local']:.2f}x; identical submission.csv: {same}")


if __name__ == "__main__":
    main()
