"""Stage `package`, once per trained network (`models/untuned`, `models/tuned`): the network
becomes the segmenter users get, logged once into its training run (`mlops.packaging`): network
and recipe, ONNX, and int8 where it keeps its `val` DSB (`package.int8_calibration_crops`).
`models/packages/<name>.json` names the package; `evaluate`, `promote` and the registry use it,
never the bare network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.data import load_split
from nucseg.mlops import tracking
from nucseg.mlops.networks import PACKAGES_DIR, TRAINED_NETWORKS
from nucseg.mlops.packaging import PackagingError, int8_check, package, read_recipe, read_run_info

log = get_logger("nucseg.package")


def run(params: dict[str, Any], name: str, model_dir: str | Path | None = None,
        split_path: str | Path = "artifacts/split.csv", samples_dir: str | Path = "artifacts/prepared",
        output_dir: str | Path = PACKAGES_DIR) -> dict[str, str]:
    """Package the network `name` (its DVC output unless `model_dir` says where); returns what
    `models/packages/<name>.json` holds."""
    import mlflow

    if model_dir is None and name not in TRAINED_NETWORKS:
        raise PackagingError(f"no trained network called {name!r}: expected one of {', '.join(TRAINED_NETWORKS)}")
    model_dir = Path(model_dir or TRAINED_NETWORKS[name].directory)
    cfg = params["package"]
    crops, crop_size = int(cfg["int8_calibration_crops"]), int(cfg["int8_crop_size"])
    tracking.setup()
    run_id, _ = read_run_info(model_dir / "run.json")
    recipe = read_recipe(model_dir / "recipe.json")

    def int8_offer():
        loaded = load_split(split_path, samples_dir, ("train", "val"), labelled=("val",),
                            desc=f"package {name}: loading")
        return int8_check([sample["image"] for sample in loaded["train"]], loaded["val"], recipe, name,
                          crops, crop_size)

    uri = package(mlflow.MlflowClient(), run_id, model_dir / "model.keras", recipe, int8_offer if crops > 0 else None)
    packaged = {"run_id": run_id, "model_uri": uri}
    io.write_json(Path(output_dir) / f"{name}.json", packaged)
    log.info("packaged %s: %s", name, packaged)
    return packaged
