"""BCE + soft-Dice loss and pixel overlap metrics for (B, H, W, C) probability maps.

BCE alone under-weights the thin border channel and small nuclei (most pixels are background);
the Dice term is scale-free and compensates. Only `keras.ops` is used so every backend works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="nucseg")
class BCEDiceLoss(keras.losses.Loss):
    """`bce_weight * BCE + dice_weight * (1 - Dice)`, each a channel-weighted mean.

    Channel weights are normalised to sum to 1, so they only shift emphasis (e.g. onto the
    border channel) without changing the loss scale. Dice is pooled over the whole batch per
    channel (smooth=1): per-image Dice is unstable on crops that contain no nucleus, and the
    loss is therefore one scalar per batch, which makes per-sample weights meaningless.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        channel_weights: Sequence[float] = (1.0, 1.0),
        smooth: float = 1.0,
        name: str = "bce_dice",
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not channel_weights or sum(channel_weights) <= 0 or min(channel_weights) < 0:
            raise ValueError(f"channel_weights must be non-negative with a positive sum: {channel_weights}")
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.channel_weights = tuple(float(w) for w in channel_weights)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        channels = y_pred.shape[-1]
        if channels is not None and channels != len(self.channel_weights):
            raise ValueError(
                f"y_pred has {channels} channels but {len(self.channel_weights)} channel_weights were given"
            )
        y_true = ops.cast(y_true, y_pred.dtype)
        weights = ops.convert_to_tensor(self.channel_weights, dtype=y_pred.dtype)
        weights = weights / ops.sum(weights)
        axes = (0, 1, 2)

        p = ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        bce = ops.sum(ops.mean(bce, axis=axes) * weights)

        intersection = ops.sum(y_true * y_pred, axis=axes)
        total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        dice_loss = ops.sum((1.0 - dice) * weights)
        return self.bce_weight * bce + self.dice_weight * dice_loss

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "bce_weight": self.bce_weight,
            "dice_weight": self.dice_weight,
            "channel_weights": list(self.channel_weights),
            "smooth": self.smooth,
        }


def bce_dice_loss(
    bce_weight: float = 1.0, dice_weight: float = 1.0, channel_weights: Sequence[float] = (1.0, 1.0)
) -> BCEDiceLoss:
    return BCEDiceLoss(bce_weight=bce_weight, dice_weight=dice_weight, channel_weights=channel_weights)


class _PixelOverlap(keras.metrics.Metric):
    """Accumulates thresholded overlap sums over an epoch, so the score is pooled over pixels
    rather than an average of per-batch ratios (which over-weights near-empty batches)."""

    def __init__(self, name: str, threshold: float = 0.5, channel: int = 0, dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.channel = int(channel)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.true_sum = self.add_variable(shape=(), initializer="zeros", name="true_sum")
        self.pred_sum = self.add_variable(shape=(), initializer="zeros", name="pred_sum")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        # Targets may be interpolated by augmentation, so they are binarised at 0.5 as well.
        truth = ops.cast(ops.cast(y_true[..., self.channel], self.dtype) > 0.5, self.dtype)
        pred = ops.cast(y_pred[..., self.channel] > self.threshold, self.dtype)
        weight = 1.0
        if sample_weight is not None:
            weight = ops.cast(sample_weight, self.dtype)
            for _ in range(len(truth.shape) - len(weight.shape)):
                weight = ops.expand_dims(weight, -1)  # per-image weights broadcast over pixels
        self.intersection.assign_add(ops.sum(truth * pred * weight))
        self.true_sum.assign_add(ops.sum(truth * weight))
        self.pred_sum.assign_add(ops.sum(pred * weight))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold, "channel": self.channel}


@keras.saving.register_keras_serializable(package="nucseg")
class PixelIoU(_PixelOverlap):
    """Foreground IoU; 1.0 when both target and prediction are empty (they agree)."""

    def __init__(self, name: str = "iou", threshold: float = 0.5, channel: int = 0, dtype: Any = None):
        super().__init__(name=name, threshold=threshold, channel=channel, dtype=dtype)

    def result(self):
        union = self.true_sum + self.pred_sum - self.intersection
        return ops.where(union > 0, self.intersection / ops.maximum(union, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="nucseg")
class PixelDice(_PixelOverlap):
    """Foreground Dice (F1); 1.0 when both target and prediction are empty (they agree)."""

    def __init__(self, name: str = "dice", threshold: float = 0.5, channel: int = 0, dtype: Any = None):
        super().__init__(name=name, threshold=threshold, channel=channel, dtype=dtype)

    def result(self):
        total = self.true_sum + self.pred_sum
        return ops.where(total > 0, 2.0 * self.intersection / ops.maximum(total, 1.0), 1.0)
