import numpy as np
import pytest

from nucseg.core.rle import labels_to_rles, rle_decode, rle_encode, submission_rows

# 3x4 image, pixels numbered column-major from 1:
#   1 4 7 10
#   2 5 8 11
#   3 6 9 12
HAND_MASK = np.array(
    [
        [0, 0, 1, 0],
        [1, 0, 0, 0],
        [1, 0, 0, 0],
    ],
    bool,
)
HAND_RLE = "2 2 7 1"


def test_encode_hand_example():
    assert rle_encode(HAND_MASK) == HAND_RLE


def test_decode_hand_example():
    decoded = rle_decode(HAND_RLE, (3, 4))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, HAND_MASK)


def test_run_continues_across_columns():
    # pixel 3 is the bottom of column 0, pixel 4 the top of column 1
    mask = np.zeros((3, 4), bool)
    mask[2, 0] = mask[0, 1] = True
    assert rle_encode(mask) == "3 2"
    np.testing.assert_array_equal(rle_decode("3 2", (3, 4)), mask)


def test_full_mask_is_one_run():
    assert rle_encode(np.ones((3, 4), np.uint8)) == "1 12"


def test_empty_mask():
    assert rle_encode(np.zeros((5, 7), bool)) == ""
    decoded = rle_decode("", (5, 7))
    assert decoded.shape == (5, 7) and not decoded.any()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (13, 17), (64, 40)])
def test_round_trip_random_label_maps(shape):
    rng = np.random.default_rng(sum(shape))
    labels = rng.integers(0, 6, size=shape)
    rles = labels_to_rles(labels)
    present = [v for v in range(1, 6) if (labels == v).any()]
    assert len(rles) == len(present)
    for value, rle in zip(present, rles):
        assert rle == rle_encode(labels == value)
        np.testing.assert_array_equal(rle_decode(rle, shape), labels == value)


def test_labels_to_rles_follows_label_order():
    labels = np.zeros((3, 4), np.uint16)
    labels[0, 0] = 9  # pixel 1
    labels[:, 3] = 2  # pixels 10-12
    labels[1:, 1] = 5  # pixels 5-6
    assert labels_to_rles(labels) == ["10 3", "5 2", "1 1"]


def test_labels_to_rles_joins_several_runs_of_one_label():
    labels = np.zeros((3, 4), np.uint16)
    labels[1:, 0] = 1
    labels[0, 2] = 1
    labels[0, 1] = 2
    assert labels_to_rles(labels) == [HAND_RLE, "4 1"]


def test_submission_rows():
    labels = np.zeros((3, 4), np.uint16)
    labels[1:, 0] = 3
    labels[0, 3] = 4
    assert submission_rows("img", labels) == [("img", "2 2"), ("img", "10 1")]


def test_submission_rows_for_an_image_without_nuclei():
    assert submission_rows("empty", np.zeros((4, 4), np.uint16)) == [("empty", "")]


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "pairs"),
        ("1 x", "integers"),
        ("1.5 2", "integers"),
        ("0 2", ">= 1"),
        ("-1 2", ">= 1"),
        ("2 0", "positive"),
        ("2 -1", "positive"),
        ("11 3", "beyond the 12 pixels"),
        ("7 1 2 2", "sorted"),
        ("2 3 4 1", "overlap"),
    ],
)
def test_decode_rejects_malformed_rle(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (3, 4))
