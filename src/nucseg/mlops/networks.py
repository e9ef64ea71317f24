"""The networks the pipeline trains: for each, the stage that trains it and its DVC output.
`package`, `promote` and `store_check` all go through this one list.

Order matters: on a DSB tie the candidate listed first wins promotion, so tuning has to beat
the baseline, not merely match it."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Trained(NamedTuple):
    stage: str
    directory: str


TRAINED_NETWORKS = {"untuned": Trained("train", "models/untuned"), "tuned": Trained("tune", "models/tuned")}
PACKAGES_DIR = "models/packages"
FOLDS_DIR = "models/unseen"  # the leave-type-out folds' networks (`unseen_fold`), one folder per fold


def package_record(name: str, packages_dir: str | Path = PACKAGES_DIR) -> Path:
    """Where the `package` stage names the segmenter it made of network `name`, and its recipe."""
    return Path(packages_dir) / f"{name}.json"


def thresholds_table(name: str, packages_dir: str | Path = PACKAGES_DIR) -> Path:
    """Every post-processing candidate the `package` stage scored on `val` for network `name`."""
    return Path(packages_dir) / f"{name}_thresholds.csv"
