"""`nucseg score` end to end against a classical pipeline, in one run on one machine: speed on
`data/stage1_test` and DSB on the `test` split, so the champion's lead (or lag) is measured, not
remembered.

The classical pipeline is the baseline nucleus counters start from (scikit-image): luminance,
inverted on a bright background, Otsu's threshold, holes filled, and a watershed of the distance
transform seeded at its peaks. It has no knobs tuned on this data.

Run from the project root after `dvc repro`:
    python benchmarks/score_speed.py [--quality fast default best] [--workers 0 1]
Prints numbers; asserts nothing. `nucseg score` runs as a user runs it (a fresh process, start-up
included) into a temporary folder; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed
from tqdm import tqdm

from nucseg import io
from nucseg.core import metrics
from nucseg.core.preprocess import bright_background
from nucseg.core.quality import QUALITY_LEVELS

MIN_NUCLEUS_AREA = 16  # pixels; specks below this are noise, not nuclei
PEAK_DISTANCE = 4  # pixels between two seeds of the distance watershed


def classical_labels(image: np.ndarray) -> np.ndarray:
    """Instance labels by Otsu + distance-transform watershed."""
    rgb = io.to_rgb(image).astype(np.float32)
    grey = rgb.mean(axis=-1) / (65535.0 if rgb.max() > 255 else 255.0)
    if bright_background(grey):
        grey = 1.0 - grey
    foreground = ndi.binary_fill_holes(grey > threshold_otsu(grey))
    foreground = remove_small_objects(foreground, max_size=MIN_NUCLEUS_AREA - 1)
    distance = ndi.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=PEAK_DISTANCE, labels=ndi.label(foreground)[0], exclude_border=False)
    markers = np.zeros(grey.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def megapixels_of(paths: list[Path]) -> float:
    return sum(np.prod(io.read_image(path).shape[:2]) for path in paths) / 1e6


def time_nucseg_score(folder: Path, model_uri: str, quality: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(["nucseg", "score", "--input", str(folder), "--output", out, "--model-uri", model_uri,
                        "--quality", quality, "--workers", str(workers)], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def time_classical(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in tqdm(paths, desc="classical: segmenting", unit="image"):
        classical_labels(io.read_image(path))
    return time.perf_counter() - start


def classical_test_dsb(split_path: Path, prepared: Path, data: Path) -> pd.Series:
    """DSB per modality (and overall) of the classical pipeline on the `test` split's raw images."""
    split = pd.read_csv(split_path)
    test = split[split["split"] == "test"]
    scores = []
    for row in tqdm(test.itertuples(), total=len(test), desc="classical: test DSB", unit="image"):
        truth = np.load(prepared / f"{row.id}.npz")["labels"]
        image = io.read_image(data / row.id / "images" / f"{row.id}.png")
        scores.append(float(metrics.dsb_scores_per_threshold(truth, classical_labels(image)).mean()))
    per = test.assign(dsb=scores).groupby("modality")["dsb"].mean()
    return pd.concat([pd.Series({"overall": float(np.mean(scores))}), per])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("data/stage1_test"))
    parser.add_argument("--model-uri", default="models:/nucseg-unet@champion")
    parser.add_argument("--promotion", type=Path, default=Path("reports/promotion.json"),
                        help="the champion's test DSB at each quality level, as promote measured it")
    parser.add_argument("--quality", nargs="+", default=list(QUALITY_LEVELS), choices=list(QUALITY_LEVELS))
    parser.add_argument("--workers", nargs="+", type=int, default=[0], help="`nucseg score --workers` values to time "
                        "(0: one process per core, 1: one process)")
    args = parser.parse_args()
    paths = [path for _, path in io.find_images(args.input)]
    megapixels = megapixels_of(paths)
    print(f"{len(paths)} images, {megapixels:.2f} megapixels ({args.input})", flush=True)

    classical_wall = time_classical(paths)
    classical_speed = megapixels / classical_wall
    print(f"classical (Otsu + distance watershed), read and segment: {classical_wall:.1f} s, "
          f"{classical_speed:.2f} megapixels/s")
    for quality in args.quality:
        for workers in args.workers:
            wall = time_nucseg_score(args.input, args.model_uri, quality, workers)
            print(f"nucseg score --quality {quality} --workers {workers} ({args.model_uri}), end to end: {wall:.1f} s, "
                  f"{megapixels / wall:.2f} megapixels/s, {megapixels / wall / classical_speed:.2f}x classical",
                  flush=True)

    classical = classical_test_dsb(Path("artifacts/split.csv"), Path("artifacts/prepared"), Path("data/stage1_train"))
    promotion = json.loads(args.promotion.read_text())
    measured = promotion["candidates"][promotion["champion"]].get("quality", {})
    levels = {level: measured[level] for level in QUALITY_LEVELS if level in measured}
    modalities = sorted(classical.index.drop("overall"))
    print("test DSB (champion's levels as promote measured them)")
    print(f"  {'':<14}" + "".join(f"{name:>11}" for name in [*levels, "classical"]))
    for key, modality in [("dsb", "overall"), *((f"dsb_{m}", m) for m in modalities)]:
        print(f"  {modality:<14}" + "".join(f"{m.get(key, float('nan')):>11.4f}" for m in levels.values())
              + f"{classical.get(modality, float('nan')):>11.4f}")


if __name__ == "__main__":
    main()
