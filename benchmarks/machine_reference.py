"""The machine's reference figure: training steps of a fixed U-Net (the default of 2026) on
synthetic crops, nothing else in the process (no data, no augmentation, no MLflow), so times
measured on two machines can be compared: a pipeline time is quoted as "N minutes on a machine
whose reference is R crops/s".

Run from the project root:  python benchmarks/machine_reference.py [--steps 30]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from nucseg.config import load_params

import keras  # noqa: E402  (after nucseg.config set the backend)

from nucseg.core.training import build_model  # noqa: E402


# The yardstick is this network, whatever params.yaml says today: an experiment with another width
# or crop must not move it. Learning rate and loss weights come from the params (no effect on speed).
REFERENCE_MODEL = {"depth": 4, "base_filters": 16, "dropout": 0.1, "batchnorm": True, "encoder": "plain"}
REFERENCE_BATCH, REFERENCE_CROP = 8, 128


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def synthetic_batch(batch_size: int, crop_size: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks on a dark background, and their foreground/border targets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:crop_size, :crop_size]
    images = np.zeros((batch_size, crop_size, crop_size, channels), np.float32)
    targets = np.zeros((batch_size, crop_size, crop_size, 2), np.float32)
    for k in range(batch_size):
        for _ in range(12):
            cy, cx, radius = *rng.uniform(0, crop_size, 2), rng.uniform(4, 12)
            distance = np.hypot(yy - cy, xx - cx)
            images[k, distance < radius] = rng.uniform(0.5, 1.0)
            targets[k, distance < radius, 0] = 1.0
            targets[k, (distance < radius) & (distance > radius - 3), 1] = 1.0
    return images + rng.normal(0, 0.05, images.shape).astype(np.float32), targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    model = build_model(REFERENCE_MODEL, load_params()["train"])
    batch, crop = REFERENCE_BATCH, REFERENCE_CROP
    x, y = synthetic_batch(batch, crop, model.input_shape[-1])
    model.fit(x, y, epochs=3, batch_size=batch, verbose=0)  # trace and warm up
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / args.steps
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, keras {keras.__version__} "
          f"({keras.backend.backend()})")
    print(f"reference U-Net (depth {REFERENCE_MODEL['depth']}, {REFERENCE_MODEL['base_filters']} filters), "
          f"batch {batch} of {crop}x{crop}: {seconds:.3f} s/step")
    print(f"reference: {batch / seconds:.1f} training crops/s")


if __name__ == "__main__":
    main()
