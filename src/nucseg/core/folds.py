"""Leave-type-out folds: the image types of a split table (one modality at one acquisition size,
as the crop sampler counts types) and the types a fold holds out of training."""

from __future__ import annotations

import pandas as pd


def image_types(split: pd.DataFrame) -> pd.Series:
    """`<modality> <height>x<width>` of every row of the split table."""
    return split["modality"] + " " + split["height"].astype(str) + "x" + split["width"].astype(str)


def held_out_types(fold: list[str], types: set[str]) -> list[str]:
    """The image types a fold names: exactly, or every type of a named modality."""
    return sorted(t for t in types for entry in fold if t == entry or t.startswith(entry + " "))
