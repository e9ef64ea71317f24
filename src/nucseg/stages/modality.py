"""Stage `modality`: k-means on colour/intensity features groups images by imaging modality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.modality import FEATURES, example_grid, fit, image_features, predict

log = get_logger("nucseg.modality")


def run(params: dict[str, Any], manifest_path: str | Path = "artifacts/manifest.csv",
        table_path: str | Path = "artifacts/modality.csv", model_path: str | Path = "artifacts/modality_model.json",
        grid_path: str | Path = "reports/modality_examples.png",
        counts_path: str | Path = "reports/modality_counts.json") -> dict[str, dict[str, int]]:
    cfg = params["modality"]
    manifest = pd.read_csv(manifest_path)
    images = {row.id: io.read_image(row.image_path)
              for row in tqdm(manifest.itertuples(), total=len(manifest), desc="modality: features", unit="image")}
    features = np.stack([image_features(images[i]) for i in manifest["id"]])
    is_train = (manifest["split"] == "train").to_numpy()
    model = fit(features[is_train], int(cfg["n_clusters"]), int(cfg["seed"]), float(cfg["fluorescence_max_median"]),
                float(cfg["histology_min_saturation"]))
    table = manifest[["id", "split"]].copy()
    table["modality"] = predict(model, features)
    for j, name in enumerate(FEATURES):
        table[name] = features[:, j].round(5)

    rng = np.random.default_rng(int(cfg["seed"]))
    groups = {}
    for name in model["names"]:
        ids = table.loc[is_train & (table["modality"] == name).to_numpy(), "id"].to_numpy()
        chosen = rng.choice(ids, size=min(len(ids), int(cfg["examples_per_cluster"])), replace=False)
        groups[name] = [images[i] for i in chosen]
    counts = {split: {name: int(n) for name, n in part["modality"].value_counts().sort_index().items()}
              for split, part in table.groupby("split")}

    io.write_csv(table_path, table)
    io.write_json(model_path, model)
    io.write_png(grid_path, example_grid(groups, int(cfg["thumb_size"])))
    io.write_json(counts_path, counts)
    log.info("modality counts per split: %s", counts)
    return counts
