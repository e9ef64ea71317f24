"""The tuner's search space and what a trial is: which params a hyperparameter replaces, the
compiled U-Net a trial trains, and the score it is ranked by.

The objective is what promotion decides on: the DSB metric of whole `val` images after
post-processing (with the params' thresholds), not pixel IoU on crops: the loss weights are
searched too, and a loss scaled by smaller weights would look better without the model being
any better.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Iterable

import nucseg.config  # noqa: F401 - backend and log-level defaults must be set before keras loads
import keras
import keras_tuner as kt

from nucseg.core import resume, training
from nucseg.core.data import CropDataset
from nucseg.core.evaluation import evaluate_model
from nucseg.core.segment import Recipe

# Tunable name -> the params section whose value it replaces.
SECTIONS = {"base_filters": "model", "depth": "model", "dropout": "model",
            "learning_rate": "train", "bce_weight": "train", "dice_weight": "train"}
CHOICES = ("base_filters", "depth")
LOG_SAMPLED = ("learning_rate",)
VAL_METRICS = ("val_dsb", "val_loss", "val_iou", "val_dice")
# Trial results depend on these train keys (beside the tuned ones); a saved search resumes only if they are unchanged.
TRIAL_TRAIN_KEYS = ("seed", "crop_size", "batch_size", "border_loss_weight", "val_crops", "modality_balance",
                    "type_balance")
# tune keys a resumed search may change: they limit the search but do not change its trials.
RESUMABLE_TUNE_KEYS = ("max_minutes", "retrain", "max_trials", "worker_timeout")
OBJECTIVE = ("val_dsb", "max")


def declare_space(hp: kt.HyperParameters, space: dict[str, list]) -> dict[str, Any]:
    """Register `space` with `hp`; returns this trial's values. Choices for the architecture
    (integers), ranges for the rest, the learning rate sampled on a log scale."""
    unknown = sorted(set(space) - set(SECTIONS))
    if unknown:
        raise ValueError(f"tune.space: unknown hyperparameter(s) {unknown}, expected some of {sorted(SECTIONS)}")
    return {name: _declare(hp, name, spec) for name, spec in space.items()}


def _declare(hp: kt.HyperParameters, name: str, spec: list) -> Any:
    if name in CHOICES:
        return hp.Choice(name, [int(v) for v in spec])
    low, high = (float(v) for v in spec)
    return hp.Float(name, low, high, sampling="log" if name in LOG_SAMPLED else "linear")


def merged_params(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `params` with the tuned values in place of the model/train defaults."""
    merged = copy.deepcopy(params)
    for name, value in values.items():
        merged[SECTIONS[name]][name] = value
    return merged


def build_hypermodel(hp: kt.HyperParameters, params: dict[str, Any]) -> keras.Model:
    """The pipeline's compiled U-Net with this trial's values. The seed is reset first, so trials
    of the same architecture start from the same weights and differ only by their values."""
    tuned = merged_params(params, declare_space(hp, params["tune"]["space"]))
    keras.utils.set_random_seed(int(params["train"]["seed"]))
    return training.build_model(tuned["model"], tuned["train"])


class UNetHyperModel(kt.HyperModel):
    """`build_hypermodel` bound to the params, and a `fit` that rewinds the crop stream to the
    first epoch trained (every trial, a hyperband continuation included, then sees the batches a
    from-scratch run would, so scores differ by hyperparameters rather than by data luck) and
    scores the trained model on the whole `val` images (`val_samples`, with their labels) with the
    params' post-processing. Trials are ranked without test-time augmentation or rescaling to the
    training nucleus size: both multiply the network time of every trial's scoring, and the kept model gets them
    back with its thresholds."""

    def __init__(self, params: dict[str, Any], val_samples: list[dict[str, Any]]):
        super().__init__(name="unet")
        self.params = params
        self.val_samples = val_samples
        self.recipe = dataclasses.replace(Recipe.from_params(params), tta="none", rescale=False)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return build_hypermodel(hp, self.params)

    def fit(self, hp, model, dataset: CropDataset, *args, initial_epoch: int = 0, **kwargs) -> dict[str, float]:
        dataset.set_epoch(initial_epoch)
        history = model.fit(dataset, *args, initial_epoch=initial_epoch, **kwargs)
        return trial_result(model, history.history, self.val_samples, self.recipe)


def trial_result(model: keras.Model, history: dict[str, list[float]], val_samples: list[dict[str, Any]],
                 recipe: Recipe) -> dict[str, float]:
    """The objective, `val_dsb` of the trained model, with the last epoch's crop metrics."""
    per_image, _ = evaluate_model(model, val_samples, recipe, desc="tune: trial on val")
    return {"val_dsb": float(per_image["dsb"].mean()), **{name: float(history[name][-1]) for name in VAL_METRICS[1:]}}


def mean_result(results: list[dict[str, float]]) -> dict[str, float]:
    """A trial's metrics, averaged over its executions as keras-tuner averages its objective."""
    return {name: float(sum(r[name] for r in results) / len(results)) for name in VAL_METRICS}


def search_settings(params: dict[str, Any], data_md5: str, split_path: str | Path, code: Iterable[Path]) -> dict[str, Any]:
    """Everything a trial's score depends on (`core.resume.settings`): the params trials share,
    the data version, the train/val rows of the split, and the code of the search."""
    space = params["tune"]["space"]
    sections = {"tune": {k: v for k, v in params["tune"].items() if k not in RESUMABLE_TUNE_KEYS},
                "model": {k: v for k, v in params["model"].items() if k not in space},
                "train": {k: params["train"][k] for k in TRIAL_TRAIN_KEYS},
                "augment": params["augment"]}
    return resume.settings(sections, data_md5, split_path, ("train", "val"), code)
