import numpy as np
import pytest
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from nucseg.core.metrics import iou_matrix
from nucseg.core.postprocess import fill_label_holes, labels_from_maps


def touching_disks() -> np.ndarray:
    """Two r=12 disks 22 px apart; the overlap goes to the nearer centre."""
    shape = (60, 84)
    labels = np.zeros(shape, np.uint16)
    rows, cols = np.indices(shape)
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[disk((30, 30), 12)] = True
    second[disk((30, 52), 12)] = True
    labels[first] = 1
    labels[second & ~(first & (cols < 41))] = 2
    return labels


def test_touching_disks_are_split_by_the_border_channel():
    truth = touching_disks()
    foreground = (truth > 0).astype(np.float32)
    border = find_boundaries(truth, mode="inner").astype(np.float32)  # outlines + contact line
    labels = labels_from_maps(foreground, border)
    assert labels.max() == 2
    iou = iou_matrix(truth, labels)
    assert iou.shape == (2, 2)
    assert np.all(iou.max(axis=1) > 0.8)
    assert sorted(iou.argmax(axis=1).tolist()) == [0, 1]  # one prediction per disk


def test_touching_disks_merge_without_border_channel():
    truth = touching_disks()
    foreground = (truth > 0).astype(np.float32)
    labels = labels_from_maps(foreground, np.zeros_like(foreground))
    np.testing.assert_array_equal(labels, (truth > 0).astype(np.uint16))


def test_object_without_marker_is_kept():
    foreground = np.zeros((30, 30), np.float32)
    foreground[disk((15, 15), 8)] = 0.6  # above fg_threshold, below marker_threshold
    labels = labels_from_maps(foreground, np.zeros_like(foreground))
    np.testing.assert_array_equal(labels, (foreground > 0).astype(np.uint16))


def test_markers_below_min_marker_area_do_not_split_a_nucleus():
    foreground = np.zeros((40, 40), np.float32)
    foreground[disk((20, 20), 10)] = 1.0
    border = foreground.copy()  # border everywhere in the disk ...
    border[disk((20, 20), 5)] = 0.0  # ... but a large core
    border[20, 28:30] = 0.0  # ... and a 2-px island
    labels = labels_from_maps(foreground, border, min_marker_area=4)
    np.testing.assert_array_equal(labels, (foreground > 0).astype(np.uint16))
    assert labels_from_maps(foreground, border, min_marker_area=1).max() == 2


def test_holes_are_filled():
    foreground = np.zeros((30, 30), np.float32)
    foreground[disk((15, 15), 10)] = 1.0
    hole = np.zeros_like(foreground, bool)
    hole[disk((15, 15), 3)] = True
    foreground[hole] = 0.0
    zeros = np.zeros_like(foreground)
    filled = labels_from_maps(foreground, zeros)
    assert filled[hole].tolist() == [1] * hole.sum()
    assert np.count_nonzero(filled) == np.count_nonzero(foreground) + hole.sum()
    assert not labels_from_maps(foreground, zeros, fill_holes=False)[hole].any()


def test_fill_label_holes_keeps_an_instance_inside_a_hole():
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 4  # ring with a 3x3 hole ...
    labels[2:5, 2:5] = 0
    labels[3, 3] = 9  # ... holding another instance
    filled = fill_label_holes(labels)
    expected = np.zeros((7, 7), np.int32)
    expected[1:6, 1:6] = 4
    expected[3, 3] = 9
    np.testing.assert_array_equal(filled, expected)
    assert labels[2, 2] == 0  # input untouched


def test_specks_below_min_object_area_disappear():
    foreground = np.zeros((20, 20), np.float32)
    foreground[2:5, 2:5] = 1.0  # 9 px < 12
    foreground[10:13, 10:14] = 1.0  # 12 px, kept
    labels = labels_from_maps(foreground, np.zeros_like(foreground))
    assert not labels[2:5, 2:5].any()
    assert labels[10:13, 10:14].tolist() == [[1] * 4] * 3
    assert np.count_nonzero(labels) == 12


def test_all_background_gives_zero_labels():
    zeros = np.zeros((64, 48), np.float32)
    labels = labels_from_maps(zeros, zeros)
    assert labels.dtype == np.uint16
    assert labels.shape == (64, 48)
    assert not labels.any()


def test_labels_are_uint16_and_consecutive():
    foreground = np.zeros((60, 60), np.float32)
    for centre in [(10, 10), (10, 45), (45, 10), (45, 45)]:
        foreground[disk(centre, 6)] = 1.0
    foreground[28:30, 28:30] = 1.0  # speck removed between the second and third disk
    labels = labels_from_maps(foreground, np.zeros_like(foreground))
    assert labels.dtype == np.uint16
    assert np.unique(labels).tolist() == [0, 1, 2, 3, 4]


def test_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="one shape"):
        labels_from_maps(np.zeros((4, 4)), np.zeros((4, 5)))
