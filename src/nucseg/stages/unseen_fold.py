"""Stage `unseen_fold`, once per leave-type-out fold (`unseen.folds`): the untuned recipe trained
without the fold's image types, on its own budget (`unseen.epochs`). The network is this stage's
output (`models/unseen/<fold>/`), so `unseen` can choose its thresholds and score it again after
a post-processing change without training it again. A fold whose types the data lacks, or that
leaves nothing to train on, says so in its `fold.json` and trains nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.folds import held_out_types, image_types
from nucseg.mlops.networks import FOLDS_DIR

log = get_logger("nucseg.unseen")


def run(params: dict[str, Any], name: str, split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", folds_dir: str | Path = FOLDS_DIR) -> dict[str, Any]:
    """Train fold `name`; returns what `<folds_dir>/<name>/fold.json` holds."""
    import keras

    from nucseg.core.data import load_split
    from nucseg.core.training import build_model, fit

    folds = params["unseen"]["folds"]
    if name not in folds:
        raise ValueError(f"unseen.folds has no fold {name!r}: expected one of {', '.join(folds)}")
    split = pd.read_csv(split_path).assign(type=lambda table: image_types(table))
    held_out = held_out_types(list(folds[name]), set(split["type"]))
    out = Path(folds_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.keras").unlink(missing_ok=True)
    training = split[(split["split"] == "train") & ~split["type"].isin(held_out)]
    validation = split[(split["split"] == "val") & ~split["type"].isin(held_out)]
    record = {"fold": name, "names": list(folds[name]), "held_out": held_out, "trained": False,
              "train_images": int(len(training)), "val_images": int(len(validation)),
              "held_out_images": int(split["type"].isin(held_out).sum())}
    if not (held_out and len(training) and len(validation)):
        record["reason"] = (f"the data has none of {list(folds[name])} (its types: {sorted(set(split['type']))})"
                            if not held_out else "nothing left to train or choose thresholds on without them")
        log.warning("unseen fold %s: not trained: %s", name, record["reason"])
        io.write_json(out / "fold.json", record)
        return record
    log.info("unseen fold %s: training without %s on %d images", name, held_out, len(training))
    loaded = load_split(split_path, samples_dir, ("train", "val"), labelled=(), desc=f"unseen fold {name}: loading")
    types = dict(zip(split["id"], split["type"]))
    train, val = ([s for s in loaded[side] if types[s["id"]] not in held_out] for side in ("train", "val"))
    keras.utils.set_random_seed(int(params["train"]["seed"]))
    model = build_model(params["model"], params["train"])
    epochs = int(params["unseen"]["epochs"])
    with tempfile.TemporaryDirectory(prefix=f"nucseg-unseen-{name}-") as tmp:
        history, _ = fit(model, train, val, params, Path(tmp), run_id="", epochs=epochs)  # its own budget
        keras.saving.load_model(Path(tmp) / "best.keras").save(out / "model.keras")
    record.update(trained=True, epochs=int(len(history)), planned_epochs=epochs)
    io.write_json(out / "fold.json", record)
    return record
