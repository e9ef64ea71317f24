"""Kaggle DSB2018 run-length encoding.

Pixels are numbered from 1, top to bottom then left to right (column-major), and a mask is
written as "start length start length ...".
"""

from __future__ import annotations

import numpy as np


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1-based starts, lengths, values) of the maximal non-zero runs of a 1-D array."""
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    values = flat[starts]
    keep = values != 0
    return starts[keep] + 1, (ends - starts)[keep], values[keep]


def _format(starts: np.ndarray, lengths: np.ndarray) -> str:
    return " ".join(f"{s} {n}" for s, n in zip(starts.tolist(), lengths.tolist()))


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle RLE of a 2-D binary mask; an empty mask encodes as ""."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if mask.size == 0:
        return ""
    starts, lengths, _ = _runs(mask.astype(bool).ravel(order="F"))
    return _format(starts, lengths)


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of `shape` from a Kaggle RLE string.

    Runs must be positive, sorted and non-overlapping and lie inside the image, as Kaggle
    requires; anything else raises ValueError, so a corrupt submission fails loudly here.
    """
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D shape, got {shape}")
    n_pixels = int(shape[0]) * int(shape[1])
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE needs start/length pairs, got {len(tokens)} numbers")
    try:
        pairs = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    except ValueError as err:
        raise ValueError(f"RLE must contain only integers: {rle!r}") from err
    starts, lengths = pairs[:, 0], pairs[:, 1]
    ends = starts + lengths - 1  # 1-based, inclusive
    if np.any(starts < 1):
        raise ValueError(f"RLE starts must be >= 1, got {starts[starts < 1][0]}")
    if np.any(lengths < 1):
        raise ValueError(f"RLE lengths must be positive, got {lengths[lengths < 1][0]}")
    if np.any(ends > n_pixels):
        raise ValueError(
            f"RLE run ends at pixel {ends.max()}, "
            f"beyond the {n_pixels} pixels of shape {tuple(shape)}"
        )
    if np.any(starts[1:] <= ends[:-1]):
        raise ValueError("RLE runs must be sorted by start and must not overlap")
    delta = np.zeros(n_pixels + 1, np.int8)
    delta[starts - 1] += 1
    delta[ends] -= 1
    return np.cumsum(delta[:-1]).astype(bool).reshape(shape, order="F")


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One RLE per instance, in ascending label order, from a single pass over the image."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {labels.shape}")
    if labels.size == 0:
        return []
    starts, lengths, values = _runs(labels.ravel(order="F"))
    if values.size == 0:
        return []
    order = np.argsort(values, kind="stable")  # group by label, runs stay in pixel order
    starts, lengths, values = starts[order], lengths[order], values[order]
    bounds = np.flatnonzero(np.diff(values)) + 1
    return [_format(s, n) for s, n in zip(np.split(starts, bounds), np.split(lengths, bounds))]


def submission_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
    """(ImageId, EncodedPixels) rows; an image without nuclei still needs one, empty, row."""
    return [(image_id, rle) for rle in labels_to_rles(labels)] or [(image_id, "")]
