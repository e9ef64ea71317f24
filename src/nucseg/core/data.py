"""Training data: prepared npz samples held in memory and served as random augmented crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

import nucseg.config  # noqa: F401 - backend and log-level defaults must be set before keras loads
import keras

from nucseg.core.augment import AugmentConfig, sample_crop
from nucseg.core.scale import instance_diameter


def _load_sample(path: Path, with_labels: bool) -> dict[str, Any]:
    try:
        with np.load(path) as npz:
            image, target, labels = npz["image"], npz["target"], npz["labels"]
    except Exception as err:  # noqa: BLE001 - missing, truncated, not a zip, missing key: all "unusable"
        raise ValueError(f"{path}: cannot read training sample ({type(err).__name__}: {err})") from err
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if target.dtype != np.uint8 or target.shape != image.shape[:2] + (2,):
        expected = image.shape[:2] + (2,)
        raise ValueError(f"{path}: expected a uint8 {expected} target, got {target.dtype} {target.shape}")
    if target.max(initial=0) > 1:
        raise ValueError(f"{path}: target must be 0/1, found value {target.max()}")
    # The median nucleus width in the network's pixels (labels stay at the annotated size).
    diameter = instance_diameter(labels) * image.shape[0] / labels.shape[0]
    return {"id": path.stem, "image": image, "target": target, "diameter": diameter,
            **({"labels": labels} if with_labels else {})}


def load_split(split_path: str | Path, samples_dir: str | Path, sides: Sequence[str],
               labelled: Sequence[str] | None = None, desc: str = "loading") -> dict[str, list[dict[str, Any]]]:
    """The prepared samples of each side of the split, checked as `load_samples` checks them, each
    with its `split` and `modality` from the split table. Instance `labels` come only with the
    sides in `labelled` (default: every side): whole-image scoring needs them, training crops do
    not, and a side's labels cost as much memory as its images."""
    split = pd.read_csv(split_path)
    labelled = sides if labelled is None else labelled
    loaded = {}
    for side in sides:
        rows = split[split["split"] == side]
        samples = load_samples([Path(samples_dir) / f"{i}.npz" for i in rows["id"]], desc=f"{desc} {side} samples",
                               with_labels=side in labelled)
        loaded[side] = [{**sample, "split": side, "modality": modality}
                        for sample, modality in zip(samples, rows["modality"])]
    return loaded


def training_diameter(samples: Sequence[dict[str, Any]]) -> float:
    """The nucleus size a network trained on `samples` knows best: the median over images of
    each image's median nucleus diameter (images without nuclei left out)."""
    diameters = [s["diameter"] for s in samples if s["diameter"] > 0]
    if not diameters:
        raise ValueError("no training image has a nucleus: cannot say what size the network learnt")
    return round(float(np.median(diameters)), 2)


def load_samples(paths: Sequence[str | Path], desc: str = "loading training samples",
                 with_labels: bool = False) -> list[dict[str, Any]]:
    """Images and targets of prepared npz files, kept as uint8 (a quarter of float32's RAM); the
    instance labels only `with_labels` (whole-image scoring needs them, training crops do not)."""
    return [_load_sample(Path(path), with_labels) for path in tqdm(paths, desc=desc, unit="npz")]


class CropDataset(keras.utils.PyDataset):
    """Random augmented crops: `steps_per_epoch` batches per epoch, freshly drawn each epoch.

    Batch `idx` of epoch `e` depends only on (seed, e, idx), never on worker threads or call
    order, so a run is reproducible with any number of workers and can resume at an epoch.

    Images are drawn with probability proportional to sqrt(area): uniform sampling would show the
    pixels of the many 256x256 images far more often than those of the few 1040x1388 ones, while
    sampling by area would let those few large images (22x the pixels) dominate the batches.
    `type_balance` then oversamples the rare *types* of image — one modality at one size, a
    stand-in for the experiment (microscope, stain, magnification) an image came from — and
    `modality_balance` the rare modalities (samples carry a `modality`): each group's share of
    the draws is its share under sqrt(area) raised to 1 - balance, so 0 keeps the data's
    proportions and 1 draws every group equally often. Without `type_balance`, the three
    512x640 fluorescence images of large dim nuclei in `train` (1.4 % of the fluorescence draws)
    were never learnt: the network gave their nuclei a foreground probability of 0.
    """

    def __init__(
        self,
        samples: Sequence[dict[str, Any]],
        *,
        batch_size: int,
        crop_size: int,
        steps_per_epoch: int,
        augment: AugmentConfig,
        seed: int,
        modality_balance: float = 0.0,
        type_balance: float = 0.0,
        workers: int = 2,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if not samples:
            raise ValueError("CropDataset needs at least one sample")
        self.samples = list(samples)
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.steps_per_epoch = steps_per_epoch
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._epoch_running = False
        self._probabilities = draw_probabilities(self.samples, modality_balance, type_balance)

    @classmethod
    def from_params(cls, samples: Sequence[dict[str, Any]], params: dict[str, Any], steps_per_epoch: int) -> CropDataset:
        """The crops `params["train"]` and `params["augment"]` describe; training and the tuner's
        trials differ only in how many batches make an epoch."""
        cfg = params["train"]
        return cls(samples, batch_size=int(cfg["batch_size"]), crop_size=int(cfg["crop_size"]),
                   steps_per_epoch=steps_per_epoch, augment=AugmentConfig.from_params(params["augment"]),
                   seed=int(cfg["seed"]), modality_balance=float(cfg.get("modality_balance", 0.0)),
                   type_balance=float(cfg.get("type_balance", 0.0)), workers=int(cfg["workers"]))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= idx < self.steps_per_epoch:
            raise IndexError(f"batch {idx} out of range for {self.steps_per_epoch} steps per epoch")
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        picks = rng.choice(len(self.samples), size=self.batch_size, p=self._probabilities)
        x = np.empty((self.batch_size, self.crop_size, self.crop_size, 3), np.float32)
        y = np.empty((self.batch_size, self.crop_size, self.crop_size, 2), np.float32)
        for row, pick in enumerate(picks):
            sample = self.samples[pick]
            x[row], y[row] = sample_crop(sample["image"], sample["target"], self.crop_size, rng, self.augment)
        return x, y

    def on_epoch_begin(self) -> None:
        self._epoch_running = True

    def on_epoch_end(self) -> None:
        # fit() and evaluate() also call this once before their first epoch (EpochIterator.reset);
        # counting only epochs that began keeps `epoch` equal to keras' epoch index, across fits too.
        if self._epoch_running:
            self.epoch += 1
        self._epoch_running = False

    def set_epoch(self, epoch: int) -> None:
        """Continue an interrupted run: pass the `initial_epoch` given to `fit`."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch


def draw_probabilities(samples: Sequence[dict[str, Any]], modality_balance: float = 0.0,
                       type_balance: float = 0.0) -> np.ndarray:
    """How often each sample is drawn: see `CropDataset`."""
    for name, balance in (("modality_balance", modality_balance), ("type_balance", type_balance)):
        if not 0.0 <= balance <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {balance}")
    weights = np.sqrt([s["image"].shape[0] * s["image"].shape[1] for s in samples])
    modalities = np.array([s.get("modality", "") for s in samples])
    types = np.array([f"{modality} {s['image'].shape[0]}x{s['image'].shape[1]}"
                      for modality, s in zip(modalities, samples)])
    for groups, balance in ((types, type_balance), (modalities, modality_balance)):
        for group in np.unique(groups):
            own = groups == group
            weights[own] *= weights[own].sum() ** -balance
    return weights / weights.sum()


def validation_crops(
    samples: Sequence[dict[str, Any]], *, n: int, crop_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`n` fixed, unaugmented crops spread evenly over the samples, so the per-epoch validation
    loss/IoU are comparable between epochs and runs."""
    if not samples or n < 1:
        raise ValueError(f"need at least one sample and n >= 1, got {len(samples)} samples, n={n}")
    x = np.empty((n, crop_size, crop_size, 3), np.float32)
    y = np.empty((n, crop_size, crop_size, 2), np.float32)
    none = AugmentConfig.none()
    for k in range(n):
        sample = samples[k * len(samples) // n]
        rng = np.random.default_rng([seed, k])
        x[k], y[k] = sample_crop(sample["image"], sample["target"], crop_size, rng, none)
    return x, y


def validation_crops_from_params(samples: Sequence[dict[str, Any]],
                                 params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """`validation_crops` as `params["train"]` sets them: training and every tuner trial score the
    same crops."""
    cfg = params["train"]
    return validation_crops(samples, n=int(cfg["val_crops"]), crop_size=int(cfg["crop_size"]), seed=int(cfg["seed"]))
