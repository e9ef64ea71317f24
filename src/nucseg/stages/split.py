"""Stage `split`: train / val / test by picture, not by tile, stratified by modality.

`val` makes every choice (epoch, tuner trial, thresholds); `test` is touched only by `promote`
and the final evaluation report, so the champion's score is an estimate, not a selection score.
Tiles of one picture (see `tiles`) always share a split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg import io
from nucseg.core import tiles
from nucseg.config import get_logger

log = get_logger("nucseg.split")

SPLITS = ("train", "val", "test")


def fractions_from_params(cfg: dict[str, Any]) -> dict[str, float]:
    val, test = float(cfg["val_fraction"]), float(cfg["test_fraction"])
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"split.val_fraction={val} and split.test_fraction={test} must be in (0, 1) "
                         "and leave some data for training")
    return {"train": 1.0 - val - test, "val": val, "test": test}


def assign_splits(table: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split of every row (columns `id`, `group`, `modality`); whole groups only.

    Within each modality, groups are dealt in a seeded order, largest first, each to the split
    furthest below its share of that modality's images. A group counts for the modality most of
    its tiles have.
    """
    group_modality = (table.groupby("group")["modality"]
                      .agg(lambda m: sorted(m.value_counts().loc[lambda c: c == c.max()].index)[0]))
    group_size = table.groupby("group").size()
    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    for modality in sorted(group_modality.unique()):
        groups = sorted(group_modality.index[group_modality == modality])
        order = rng.permutation(len(groups))
        dealt = sorted((groups[k] for k in order), key=lambda g: -group_size[g])  # stable: ties keep seeded order
        total = group_size[groups].sum()
        filled = dict.fromkeys(SPLITS, 0)
        for group in dealt:
            target = max(SPLITS, key=lambda s: fractions[s] * total - filled[s])  # ties: train, val, test
            split_of_group[group] = target
            filled[target] += int(group_size[group])
    return table["group"].map(split_of_group)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """DVC metrics: how many pictures, how many of them tiled, and split sizes per modality."""
    sizes = table.groupby("group").size()
    return {
        "images": int(len(table)),
        "groups": int(len(sizes)),
        "tiled_groups": int((sizes > 1).sum()),
        "images_in_tiled_groups": int(sizes[sizes > 1].sum()),
        "largest_group": int(sizes.max()),
        "images_per_split": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "groups_per_split": {s: int(table.loc[table["split"] == s, "group"].nunique()) for s in SPLITS},
        "modality_by_split": {s: {m: int(n) for m, n in part["modality"].value_counts().sort_index().items()}
                              for s, part in table.groupby("split")},
    }


def run(params: dict[str, Any], manifest_path: str | Path = "artifacts/manifest.csv",
        modality_path: str | Path = "artifacts/modality.csv", split_path: str | Path = "artifacts/split.csv",
        links_path: str | Path = "artifacts/tile_links.csv",
        summary_path: str | Path = "reports/split_summary.json") -> dict[str, Any]:
    cfg = params["split"]
    fractions = fractions_from_params(cfg)
    manifest = pd.read_csv(manifest_path)
    modality = pd.read_csv(modality_path)[["id", "modality"]]
    train = manifest[manifest["split"] == "train"].merge(modality, on="id")
    greys = {row.id: tiles.grey_for_seams(io.read_image(row.image_path))
             for row in tqdm(train.itertuples(), total=len(train), desc="split: reading image edges", unit="image")}
    links = tiles.find_links(greys, min_correlation=float(cfg["seam_min_correlation"]),
                             max_smoothness=float(cfg["seam_max_smoothness"]), window=int(cfg["seam_window"]))
    table = train[["id", "modality", "height", "width"]].copy()
    table.insert(1, "group", table["id"].map(tiles.group_ids(list(table["id"]), links)))
    table.insert(2, "split", assign_splits(table, fractions, int(cfg["seed"])))
    empty = [s for s in SPLITS if not (table["split"] == s).any()]
    if empty:
        raise ValueError(f"split: no picture left for {empty} among {table['group'].nunique()} groups of "
                         f"{manifest_path}; use more data or larger split fractions")
    summary = summarize(table)
    io.write_csv(links_path, pd.DataFrame([vars(link) for link in links],
                                          columns=["a", "b", "side", "smoothness", "correlation"]))
    io.write_csv(split_path, table)
    io.write_json(summary_path, summary)
    log.info("split: %d images in %d groups (%d tiled); %s", summary["images"], summary["groups"],
             summary["tiled_groups"], summary["modality_by_split"])
    return summary
