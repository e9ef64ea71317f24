import numpy as np
import pytest
from skimage.draw import disk

from nucseg.core.metrics import (
    THRESHOLDS,
    dsb_score,
    dsb_scores_per_threshold,
    iou_matrix,
    pixel_dice,
    pixel_iou,
    precision_counts,
)


def two_squares() -> np.ndarray:
    labels = np.zeros((30, 30), np.uint16)
    labels[2:12, 2:12] = 1
    labels[15:25, 15:25] = 2
    return labels


def test_thresholds_are_the_ten_dsb_values():
    assert THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_iou_matrix_non_consecutive_labels():
    true = np.zeros((4, 6), np.int32)
    true[:, 0:2] = 7  # 8 px
    true[:, 4:6] = 3  # 8 px
    pred = np.zeros((4, 6), np.int32)
    pred[:, 0:3] = 42  # 12 px: covers all of 7 plus 4 background px
    pred[0:2, 4:6] = 10  # 4 px: half of 3
    iou = iou_matrix(true, pred)
    # rows: true labels 3, 7; columns: pred labels 10, 42
    np.testing.assert_allclose(iou, [[4 / 8, 0.0], [0.0, 8 / 12]])


def test_iou_matrix_shapes_with_empty_images():
    empty = np.zeros((5, 5), np.uint16)
    assert iou_matrix(empty, empty).shape == (0, 0)
    assert iou_matrix(two_squares(), np.zeros((30, 30), np.uint16)).shape == (2, 0)


def test_iou_matrix_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        iou_matrix(np.zeros((3, 3), int), np.zeros((3, 4), int))


def test_precision_counts_is_one_to_one_by_threshold():
    iou = np.array([[0.9, 0.0, 0.0], [0.0, 0.6, 0.0]])
    assert precision_counts(iou, 0.5) == (2, 1, 0)
    assert precision_counts(iou, 0.6) == (1, 2, 1)
    assert precision_counts(iou, 0.9) == (0, 3, 2)


def test_precision_counts_rejects_ambiguous_thresholds():
    with pytest.raises(ValueError, match=">= 0.5"):
        precision_counts(np.zeros((1, 1)), 0.3)


def test_perfect_prediction_scores_one():
    labels = two_squares()
    relabelled = np.where(labels > 0, 10 - labels, 0)  # label values need not agree
    assert dsb_score(labels, relabelled) == 1.0


def test_one_of_two_nuclei_missed():
    truth = two_squares()
    pred = np.where(truth == 1, 1, 0)
    # TP=1, FP=0, FN=1 at every threshold
    np.testing.assert_array_equal(dsb_scores_per_threshold(truth, pred), np.full(10, 0.5))
    assert dsb_score(truth, pred) == 0.5


def test_nucleus_split_in_halves_matches_nothing():
    truth = np.zeros((20, 20), np.uint16)
    truth[5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 5:10] = 1
    pred[5:15, 10:15] = 2
    # each half has IoU 50/100 = 0.5, not > 0.5: TP=0, FP=2, FN=1
    np.testing.assert_allclose(iou_matrix(truth, pred), [[0.5, 0.5]])
    assert precision_counts(iou_matrix(truth, pred), 0.5) == (0, 2, 1)
    assert dsb_score(truth, pred) == 0.0


def test_empty_truth_and_empty_prediction_scores_one():
    empty = np.zeros((8, 8), np.uint16)
    assert dsb_score(empty, empty) == 1.0


def test_one_side_empty_scores_zero():
    empty = np.zeros((8, 8), np.uint16)
    one = empty.copy()
    one[2:4, 2:4] = 1
    assert dsb_score(empty, one) == 0.0
    assert dsb_score(one, empty) == 0.0


@pytest.mark.parametrize("covered", range(50, 101, 5))
def test_iou_exactly_at_threshold_does_not_count(covered):
    truth = np.zeros((10, 10), np.uint16)
    truth[:] = 1  # 100 px
    pred = np.zeros_like(truth)
    pred.ravel()[:covered] = 1  # subset: IoU = covered / 100 exactly
    # IoU k/100 beats the thresholds 0.50 .. (k-5)/100, i.e. (k - 50) / 5 of the 10
    assert dsb_score(truth, pred) == pytest.approx((covered - 50) / 50)


def test_iou_sixty_percent_counts_at_055_not_060():
    truth = np.ones((10, 10), np.uint16)
    pred = np.zeros_like(truth)
    pred[:6] = 1
    expected = np.zeros(10)
    expected[:2] = 1.0  # thresholds 0.50 and 0.55
    np.testing.assert_array_equal(dsb_scores_per_threshold(truth, pred), expected)
    assert dsb_score(truth, pred) == pytest.approx(2 / 10)


def test_shifted_disk():
    truth = np.zeros((40, 40), np.uint16)
    truth[disk((20, 20), 8)] = 1
    pred = np.zeros_like(truth)
    pred[disk((20, 23), 8)] = 5
    true_px = set(zip(*np.nonzero(truth)))
    pred_px = set(zip(*np.nonzero(pred)))
    expected_iou = len(true_px & pred_px) / len(true_px | pred_px)
    assert expected_iou == pytest.approx(148 / 238)  # 193-px disks, 3 px apart
    np.testing.assert_allclose(iou_matrix(truth, pred), [[expected_iou]])
    # 0.622 beats 0.50, 0.55 and 0.60 only
    assert dsb_score(truth, pred) == pytest.approx(3 / 10)


def test_pixel_iou_and_dice():
    true = np.zeros((4, 4), bool)
    true[:, :2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[:, 1:3] = True  # 8 px, 4 shared
    assert pixel_iou(true, pred) == pytest.approx(4 / 12)
    assert pixel_dice(true, pred) == pytest.approx(2 * 4 / 16)
    assert pixel_iou(true, true) == 1.0
    assert pixel_dice(true, ~true) == 0.0


def test_pixel_metrics_on_empty_masks():
    empty = np.zeros((3, 3), bool)
    assert pixel_iou(empty, empty) == 1.0
    assert pixel_dice(empty, empty) == 1.0
    assert pixel_iou(empty, ~empty) == 0.0
    assert pixel_dice(empty, ~empty) == 0.0
