"""BCE+Dice loss and pixel metrics against values worked out by hand."""

import math

import keras
import numpy as np
import pytest

from nucseg.core.losses import BCEDiceLoss, PixelDice, PixelIoU, bce_dice_loss


def _maps(*channels):
    """(1, 2, 2, C) float32 batch from 2x2 nested lists, one per channel."""
    return np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)[None]


def _value(x) -> float:
    return float(keras.ops.convert_to_numpy(x))


def test_perfect_prediction_has_near_zero_loss_and_perfect_metrics():
    y = _maps([[1, 0], [1, 1]], [[0, 1], [0, 0]])
    loss = bce_dice_loss()(y, y)
    # Only the clipping of probabilities to [1e-7, 1 - 1e-7] leaves a trace of BCE.
    assert _value(loss) == pytest.approx(0.0, abs=1e-5)
    for metric in (PixelIoU(), PixelDice(), PixelIoU(channel=1), PixelDice(channel=1)):
        metric.update_state(y, y)
        assert _value(metric.result()) == pytest.approx(1.0)


def test_single_channel_two_by_two_by_hand():
    y_true = _maps([[1, 0], [1, 0]])
    y_pred = _maps([[0.8, 0.2], [0.6, 0.4]])
    # BCE per pixel: -ln 0.8, -ln 0.8, -ln 0.6, -ln 0.6  -> mean (0.22314 + 0.51083) / 2
    bce = (-math.log(0.8) - math.log(0.6)) / 2
    # Dice: intersection 0.8 + 0.6 = 1.4, sum(true) 2, sum(pred) 2 -> (2.8 + 1) / (4 + 1) = 0.76
    dice = 0.76
    loss = BCEDiceLoss(channel_weights=(1.0,))
    assert _value(loss(y_true, y_pred)) == pytest.approx(bce + (1 - dice), rel=1e-5)
    assert bce + (1 - dice) == pytest.approx(0.606985, abs=1e-6)

    only_bce = BCEDiceLoss(bce_weight=1.0, dice_weight=0.0, channel_weights=(1.0,))
    only_dice = BCEDiceLoss(bce_weight=0.0, dice_weight=1.0, channel_weights=(1.0,))
    assert _value(only_bce(y_true, y_pred)) == pytest.approx(0.366985, abs=1e-5)
    assert _value(only_dice(y_true, y_pred)) == pytest.approx(0.24, abs=1e-6)


def test_channel_and_term_weights_by_hand():
    y_true = _maps([[1, 0], [1, 0]], [[0, 0], [0, 0]])
    y_pred = _maps([[0.8, 0.2], [0.6, 0.4]], [[0.5, 0.5], [0.5, 0.5]])
    bce0, dice_loss0 = 0.366985, 0.24
    # Channel 1: every pixel -ln 0.5 = ln 2; Dice (0 + 1) / (0 + 2 + 1) = 1/3.
    bce1, dice_loss1 = math.log(2), 2 / 3
    weights = (0.25, 0.75)  # (1, 3) normalised to sum 1
    expected = 0.5 * (weights[0] * bce0 + weights[1] * bce1) + 2.0 * (
        weights[0] * dice_loss0 + weights[1] * dice_loss1
    )
    loss = bce_dice_loss(bce_weight=0.5, dice_weight=2.0, channel_weights=(1.0, 3.0))
    assert _value(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_dice_is_pooled_over_the_batch():
    # Image 0 has a nucleus predicted perfectly, image 1 is empty with a faint false positive.
    y_true = np.zeros((2, 2, 2, 1), np.float32)
    y_true[0] = 1.0
    y_pred = y_true.copy()
    y_pred[1, 0, 0, 0] = 0.5
    loss = BCEDiceLoss(bce_weight=0.0, channel_weights=(1.0,))
    # Pooled: intersection 4, sum(true) 4, sum(pred) 4.5 -> 1 - 9 / 9.5
    assert _value(loss(y_true, y_pred)) == pytest.approx(1 - 9 / 9.5, rel=1e-5)


def test_channel_weight_count_must_match_outputs():
    y = _maps([[1, 0], [1, 0]], [[0, 0], [0, 0]])
    with pytest.raises(ValueError, match="channel"):
        BCEDiceLoss(channel_weights=(1.0,))(y, y)
    with pytest.raises(ValueError, match="channel_weights"):
        BCEDiceLoss(channel_weights=(0.0, 0.0))


def test_loss_config_round_trip():
    loss = bce_dice_loss(bce_weight=0.7, dice_weight=1.3, channel_weights=(1.0, 2.0))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, BCEDiceLoss)
    assert restored.get_config() == loss.get_config()


def _flat(truth, prob):
    """(1, 1, N, 1) batch: the metrics only care about pixel counts."""
    return tuple(np.asarray(v, np.float32).reshape(1, 1, -1, 1) for v in (truth, prob))


def test_metrics_pool_counts_across_batches():
    batch1 = _flat([1, 1, 0, 0], [0.9, 0.3, 0.2, 0.1])  # I=1, |T|=2, |P|=1
    batch2 = _flat([1, 0, 0, 0], [0.6, 0.7, 0.8, 0.4])  # I=1, |T|=1, |P|=3
    iou, dice = PixelIoU(), PixelDice()
    for metric in (iou, dice):
        metric.update_state(*batch1)
        metric.update_state(*batch2)
    # Pooled I=2, |T|=3, |P|=4: IoU 2 / (3 + 4 - 2), Dice 2*2 / (3 + 4). The mean of per-batch
    # IoUs would be (1/2 + 1/3) / 2 = 0.4167 instead.
    assert _value(iou.result()) == pytest.approx(0.4)
    assert _value(dice.result()) == pytest.approx(4 / 7)

    pooled_iou, pooled_dice = PixelIoU(), PixelDice()
    both = tuple(np.concatenate(pair, axis=2) for pair in zip(batch1, batch2))
    pooled_iou.update_state(*both)
    pooled_dice.update_state(*both)
    assert _value(pooled_iou.result()) == pytest.approx(_value(iou.result()))
    assert _value(pooled_dice.result()) == pytest.approx(_value(dice.result()))

    iou.reset_state()
    assert _value(iou.result()) == pytest.approx(1.0)  # nothing seen: empty agrees with empty


def test_metric_threshold_and_channel():
    y_true = _maps([[0, 0], [0, 0]], [[1, 1], [0, 0]])
    y_pred = _maps([[0.9, 0.9], [0.9, 0.9]], [[0.8, 0.6], [0.6, 0.1]])
    iou = PixelIoU(channel=1, threshold=0.7)  # predicts only the 0.8 pixel: I=1, U=2
    iou.update_state(y_true, y_pred)
    assert _value(iou.result()) == pytest.approx(0.5)
    dice = PixelDice(channel=1)  # predicts three pixels: 2*2 / (2 + 3)
    dice.update_state(y_true, y_pred)
    assert _value(dice.result()) == pytest.approx(0.8)
    assert PixelIoU.from_config(iou.get_config()).get_config() == iou.get_config()


def test_metric_per_image_sample_weight():
    y_true = np.zeros((2, 1, 2, 1), np.float32)
    y_true[:, 0, 0] = 1.0
    y_pred = np.zeros_like(y_true)
    y_pred[0] = 1.0  # image 0: I=1, |T|=1, |P|=2; image 1: I=0, |T|=1, |P|=0
    dice = PixelDice()
    dice.update_state(y_true, y_pred, sample_weight=np.array([1.0, 0.0], np.float32))
    assert _value(dice.result()) == pytest.approx(2 / 3)
