"""Instance and pixel metrics, including the 2018 Data Science Bowl score.

Label images use 0 for background; instance labels need not be consecutive.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every true instance (rows) with every predicted instance (columns).

    Rows and columns follow ascending label value. One joint histogram of the two
    label images gives all intersections at once, so the cost is linear in pixels.
    """
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"shape mismatch: true {true_labels.shape} vs pred {pred_labels.shape}")
    # Dense 0..n labels keep the joint histogram (n_true+1) x (n_pred+1), whatever the label values.
    true_dense, _, _ = relabel_sequential(true_labels)
    pred_dense, _, _ = relabel_sequential(pred_labels)
    n_true, n_pred = int(true_dense.max(initial=0)), int(pred_dense.max(initial=0))
    pair = true_dense.ravel().astype(np.int64) * (n_pred + 1) + pred_dense.ravel()
    joint = np.bincount(pair, minlength=(n_true + 1) * (n_pred + 1)).reshape(n_true + 1, n_pred + 1)
    intersection = joint[1:, 1:]
    union = joint.sum(axis=1)[1:, None] + joint.sum(axis=0)[None, 1:] - intersection
    return intersection / union


def precision_counts(iou: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(TP, FP, FN) at one threshold; a pair matches when IoU > threshold.

    Above 0.5 a true nucleus can overlap at most one prediction by more than half their
    union (and vice versa), so thresholding alone already gives a one-to-one matching.
    """
    if threshold < 0.5:
        raise ValueError(f"threshold must be >= 0.5 for unique matching, got {threshold}")
    tp = int(np.count_nonzero(iou > threshold))
    n_true, n_pred = iou.shape
    return tp, n_pred - tp, n_true - tp


def dsb_scores_per_threshold(
    true_labels: np.ndarray, pred_labels: np.ndarray, thresholds: np.ndarray = THRESHOLDS
) -> np.ndarray:
    """TP / (TP + FP + FN) at each threshold; an image with no nuclei predicted as such scores 1."""
    iou = iou_matrix(true_labels, pred_labels)
    scores = []
    for threshold in thresholds:
        tp, fp, fn = precision_counts(iou, threshold)
        total = tp + fp + fn
        scores.append(tp / total if total else 1.0)
    return np.asarray(scores, dtype=float)


def dsb_score(
    true_labels: np.ndarray, pred_labels: np.ndarray, thresholds: np.ndarray = THRESHOLDS
) -> float:
    """The 2018 Data Science Bowl score of one image: mean precision over IoU thresholds."""
    return float(dsb_scores_per_threshold(true_labels, pred_labels, thresholds).mean())


def pixel_iou(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Foreground IoU (Jaccard); two empty masks agree perfectly."""
    true_mask, pred_mask = np.asarray(true_mask, bool), np.asarray(pred_mask, bool)
    union = np.count_nonzero(true_mask | pred_mask)
    return np.count_nonzero(true_mask & pred_mask) / union if union else 1.0


def pixel_dice(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Foreground Dice (F1); two empty masks agree perfectly."""
    true_mask, pred_mask = np.asarray(true_mask, bool), np.asarray(pred_mask, bool)
    total = np.count_nonzero(true_mask) + np.count_nonzero(pred_mask)
    return 2 * np.count_nonzero(true_mask & pred_mask) / total if total else 1.0
