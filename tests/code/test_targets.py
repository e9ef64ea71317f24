"""The touching-gap target on synthetic disks: gap pixels exactly where two nuclei meet."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt
from skimage.draw import disk

from nucseg.core.targets import gap_radius, targets_from_labels, touching_gaps

SHAPE = (60, 90)


def paint(*disks: tuple[tuple[int, int], int]) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint16)
    for label, (centre, radius) in enumerate(disks, start=1):
        labels[disk(centre, radius, shape=SHAPE)] = label
    return labels


def within(labels: np.ndarray, label: int, radius: int) -> np.ndarray:
    """Pixels at Euclidean distance <= radius from nucleus `label`, by distance transform."""
    return distance_transform_edt(labels != label) <= radius


def test_gap_radius_grows_with_nucleus_size():
    assert gap_radius(int(np.pi * 10 ** 2), 0.3, 1) == 3
    assert gap_radius(int(np.pi * 20 ** 2), 0.3, 1) == 6
    assert gap_radius(4, 0.3, 1) == 1  # never below min_radius


def test_no_gap_around_an_isolated_disk():
    labels = paint(((30, 45), 12))
    assert not touching_gaps(labels).any()
    assert not targets_from_labels(labels)[..., 1].any()


def test_gap_pixels_are_exactly_those_near_both_touching_disks():
    # r=10 disks whose edges touch between columns 30 and 31
    labels = paint(((30, 20), 10), ((30, 41), 10))
    radius = gap_radius(int((labels == 1).sum()), 0.3, 1)
    expected = within(labels, 1, radius) & within(labels, 2, radius)
    gaps = touching_gaps(labels, 0.3)
    np.testing.assert_array_equal(gaps, expected)
    rows, cols = np.nonzero(gaps)
    assert gaps.any()
    # all of them around the contact point (30, 30.5), none near the far sides of the disks
    assert np.hypot(rows - 30, cols - 30.5).max() <= 10
    assert not gaps[:, :15].any() and not gaps[:, 46:].any()


def test_gap_radius_follows_each_nucleus():
    """A big and a small nucleus 4 px apart: the big one reaches the small one, the small one
    (radius 1) does not reach the big one, so only pixels within reach of both are gap."""
    labels = paint(((30, 25), 20), ((30, 50), 3))
    big, small = gap_radius(int((labels == 1).sum()), 0.3, 1), gap_radius(int((labels == 2).sum()), 0.3, 1)
    assert big >= 5 and small == 1
    expected = within(labels, 1, big) & within(labels, 2, small)
    np.testing.assert_array_equal(touching_gaps(labels, 0.3), expected)
    assert expected.any()


def test_far_apart_disks_have_no_gap_and_three_way_contacts_count_once():
    assert not touching_gaps(paint(((30, 15), 8), ((30, 70), 8))).any()
    three = paint(((20, 20), 8), ((20, 37), 8), ((35, 28), 8))
    gaps = touching_gaps(three)
    assert gaps.dtype == bool and gaps.any()


def test_targets_stack_foreground_and_separator():
    labels = paint(((30, 20), 10), ((30, 41), 10))
    target = targets_from_labels(labels, "gap")
    assert target.dtype == np.uint8 and target.shape == SHAPE + (2,)
    np.testing.assert_array_equal(target[..., 0], labels > 0)
    np.testing.assert_array_equal(target[..., 1], touching_gaps(labels))
    with pytest.raises(ValueError, match="separator"):
        targets_from_labels(labels, "ring")
